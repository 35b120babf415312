"""How a hybrid of a base and a post-trained model is made.

Reading order: ``pair`` (are these two checkpoints a compatible pair?) -> ``restored``
(which layers, which parts) -> ``restore`` (on disk: byte copies of base tensors into the
post checkpoint) -> ``soup`` (the weight interpolation ``post + alpha (base - post)``, of
every layer or of an interval's layers only) -> ``swap`` (the same hybrids in memory, undone
exactly) -> ``diff`` (how far post-training moved each layer) -> ``mergekit`` (the export).
"""
