"""Text-video retrieval in one place (a facade over the task, the runner and the metrics):

- ``retrieval_metrics(sim, video_of_text=None)`` -> ``{"t2v": {"R@1", "R@5", "R@10", "MdR", "MnR"}, "v2t": ...}``
  for a ``(num_texts, num_videos)`` similarity matrix; ``dual_softmax``, ``qb_norm``;
- ``evaluate_retrieval(model_or_checkpoint, captions, ...)``: what ``adaptvid eval --task retrieval`` prints;
- ``Index`` (``add``, ``search``, ``save``, ``Index.load``), ``build_index`` and ``search_index``: what
  ``adaptvid index`` / ``adaptvid search`` do;
- ``RetrievalTask``: symmetric InfoNCE training and R@K evaluation for ``adaptvid.train.fit``.
"""
from .runner.index import Index, build_index, search_index
from .runner.retrieval import encode_texts, evaluate_retrieval, zero_shot_retrieval_model
from .tasks.contrastive import contrastive_loss, symmetric_infonce
from .tasks.retrieval import RetrievalTask
from .tasks.retrieval_metrics import dual_softmax, qb_norm, retrieval_metrics

__all__ = ["Index", "RetrievalTask", "build_index", "contrastive_loss", "dual_softmax", "encode_texts",
           "evaluate_retrieval", "qb_norm", "retrieval_metrics", "search_index", "symmetric_infonce",
           "zero_shot_retrieval_model"]
