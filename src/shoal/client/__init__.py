"""Client-side tools that talk to a serving endpoint from outside the server.

Code here runs in the client's process, never in the server's: the load generator
(`shoal.client.loadgen`) today; the Python SDK, the edge client daemon and network emulation
belong here too (see DESIGN.md).
"""
