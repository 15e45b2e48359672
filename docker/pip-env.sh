#!/bin/sh
# Run a command (pip) in the image build with the host's pip settings: the proxy's CA from the
# build secret "pipcert" when one was given, and the index build arguments only when set (pip
# reads an empty PIP_INDEX_URL as an empty index URL).
if [ -s /run/secrets/pipcert ]; then export PIP_CERT=/run/secrets/pipcert; fi
for v in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS; do
  eval "[ -n \"\${$v:-}\" ] || unset $v"
done
exec "$@"
