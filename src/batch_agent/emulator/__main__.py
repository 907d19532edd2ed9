"""`python -m batch_agent.emulator`: the same as `batch-agent emulator`."""

from batch_agent.emulator.cli import main

raise SystemExit(main())
