"""FasterTransformer-style serving (the paper's section 6.1): request-level batching.

Up to B of the earliest requests form a batch that runs until every member has finished; nobody joins
mid-batch (the scheduler's `batching="request"`). Each request reserves the model's maximum length, and
the batch's memory is released only when the whole batch is done.
"""

from __future__ import annotations

from baselines.orca import OrcaMax
from paged.sequence import Sequence, SequenceStatus


class FasterTransformer(OrcaMax):
    name = "fastertransformer"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._finished_chunks: list[int] = []

    def free(self, seq: Sequence) -> None:
        """Hold a finished sequence's chunk until its whole batch has finished (a beam dropped
        mid-way gives its chunk back at once: the beam that replaces it needs one)."""
        if seq.status is SequenceStatus.FINISHED_ABORTED:
            super().free(seq)
            self._release_if_batch_over()
            return
        chunk = self.chunks.pop(seq.seq_id, None)
        self.reserved.pop(seq.seq_id, None)
        if chunk is not None:
            self._finished_chunks.append(chunk[0])
        self._release_if_batch_over()

    def _release_if_batch_over(self) -> None:
        if not self.chunks:
            for address in self._finished_chunks:
                self.arena.free(address)
            self._finished_chunks.clear()


def default_batch_size(num_slots: int, max_model_len: int) -> int:
    """The largest batch memory allows when every request reserves max_model_len slots."""
    return max(1, num_slots // max_model_len)
