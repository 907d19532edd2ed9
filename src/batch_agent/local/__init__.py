"""`batch-agent local JOB.json`: run a Batch job config on this machine.

The emulator plays Google's servers in this process; each emulated VM is a real
`batch-agent run` subprocess with its own metadata identity and state dir. Nothing here imports
the agent's own modules: the agent is exercised exactly as it runs on a VM.
"""
