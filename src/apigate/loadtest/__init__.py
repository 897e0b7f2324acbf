"""`apigate loadtest`: an open-loop HTTP load generator for the guide's §3.7 tests.

schedule.py (when each request is due: constant, ramp, spike), target.py (the request
bytes), worker.py (one process: uvloop + httptools client, HDR histograms per second),
runner.py (the coordinator: workers, merging, progress.py), report.py (JSON, criteria,
text), scrape.py (`--metrics`), plot.py (`--plot`), cli.py (the flags). docs/LOAD_TESTING.md
explains the method and every report field.
"""
