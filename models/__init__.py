"""Everything learned: image embedders, galleries, brain encoders, training, evaluation.

May import ``streaming``; never ``service``. Filled by the decoding-models issue.
"""
