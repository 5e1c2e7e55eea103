"""The ReBound and SP-API simulators that a scenario file drives, in-process or as a background server."""
