"""Fault suite: the control-plane client against servers that misbehave on the wire."""
