"""What other apps may listen to: a run's attempt started, a run ended.

Both are sent inside the transaction that records the change, after its event was published,
so a receiver's writes (webhooks queue their deliveries) commit or roll back with it.
"""

from django.dispatch import Signal

# run: the TranscriptRun, now processing (each attempt).
run_started = Signal()
# run: the TranscriptRun, now succeeded, failed or cancelled.
run_finished = Signal()
