"""An OMERO stand-in for tests: real Ice 3.6 and omero-py's own Slice interfaces, Python servants.

Not OMERO. It hosts, on one Ice adapter, a Glacier2 router, the per-session ServiceFactory and the
services omero-py's client, BlitzGateway and our pusher call, keeping objects in SQLite and files
under a store folder. See README.md in this folder for the contract and what is supported.
"""
