"""Sinks: where events go. `base.Sink` holds the queue, batching, retry and spool logic;
each module here only knows how to deliver one batch to its backend."""
