"""Operating apigate: backup and restore, the recovery drill, diagnosis, capacity planning.

The `apigate backup|restore|diagnose|capacity` commands (ops/cli.py) and the bash
scripts in scripts/ that wrap them. docs/OPERATIONS.md and docs/RUNBOOK.md describe how an
on-call engineer uses them.
"""
