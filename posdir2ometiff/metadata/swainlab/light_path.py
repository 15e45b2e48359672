"""Excitation and emission wavelengths read from a channel's light path, for every channel.

The log's "Microscope setup for used channels" prints each channel's light path as the software
knows it (pswain/Acquisition, ``getFilters.m`` / ``getLED.m``): the light source first, then one
``->Device:[item, item, ...]`` step per device, e.g.::

    470nm LED
    ->Combiner cube:[480/40 exciter, 515LP dichroic->(455LP dichroic)]
    ->Filter block:[Dual GFP/mCherry exciter (59022x),Dual dichroic (89021bs),No emission filter]
    ->Emission filter wheel:[632/60 emission filter]

Rules (a filter is named by its band, centre/width in nm, e.g. ``632/60``; a long-pass ``515LP``
or a dichroic has no single wavelength and is skipped):

* an item saying "emission"/"emitter" is an emission filter; "exciter"/"excitation" an
  excitation filter; an item saying neither takes the direction of its device
  (``Emission filter wheel`` → emission, ``Excitation``/``Combiner`` → excitation) or, in a
  three-part filter block ``[exciter, dichroic, emitter]``, of its place in it;
* excitation: the source's own wavelength (``470nm LED``) if it names one, else the first
  excitation filter's centre; emission: the last emission filter before the camera.

A value already set (by a sidecar, for instance) is never overwritten.
"""

from __future__ import annotations

import re

from posdir2ometiff.metadata.model import Channel

_SOURCE_NM_RE = re.compile(r"(\d{3})\s*nm\b", re.IGNORECASE)
_BAND_RE = re.compile(r"(?<![\d.])(\d{3})\s*/\s*(\d{1,3})(?!\s*(?:lp|sp)\b)(?![\d/])", re.I)
#: ``->Device:[item, item]``; the brackets may be gone (the parser drops MATLAB's quoting).
_STEP_RE = re.compile(r"->\s*([^:\[\]]*?)\s*:\s*\[?(.*?)\]?\s*$")


def _direction(text: str) -> str | None:
    low = text.lower()
    if "dichroic" in low and "emission" not in low and "exci" not in low:
        return None
    if "emission" in low or "emitter" in low:
        return "em"
    if "exciter" in low or "excitation" in low:
        return "ex"
    return None


def _device_direction(device: str) -> str | None:
    low = device.lower()
    if "emission" in low:
        return "em"
    if "excitation" in low or "exciter" in low or "combiner" in low:
        return "ex"
    return None


def filters(light_path: str) -> tuple[list[float], list[float]]:
    """(excitation filter centres, emission filter centres) named in a light path, in order."""
    ex: list[float] = []
    em: list[float] = []
    for line in light_path.splitlines()[1:]:
        step = _STEP_RE.match(line.strip())
        if step is None:
            continue
        device = step.group(1)
        items = [i.strip() for i in step.group(2).split(",")]
        for n, item in enumerate(items):
            band = _BAND_RE.search(item)
            if band is None or "no " in item.lower()[:3]:
                continue
            way = _direction(item) or _device_direction(device)
            if way is None and len(items) >= 3 and "dichroic" not in item.lower():
                way = "ex" if n == 0 else "em" if n == len(items) - 1 else None
            if way == "ex":
                ex.append(float(band.group(1)))
            elif way == "em":
                em.append(float(band.group(1)))
    return ex, em


def set_wavelengths(ch: Channel) -> None:
    """Fill the channel's excitation/emission wavelengths from its light path (see module doc)."""
    if not ch.light_path:
        return
    lines = ch.light_path.splitlines()
    ex, em = filters(ch.light_path)
    source = _SOURCE_NM_RE.search(lines[0]) if lines else None
    if ch.excitation_wavelength_nm is None:
        if source:
            ch.excitation_wavelength_nm = float(source.group(1))
        elif ex:
            ch.excitation_wavelength_nm = ex[0]
    if ch.emission_wavelength_nm is None and em:
        ch.emission_wavelength_nm = em[-1]
