"""Data: sources (digits, npz shards, TFDS) and the on-device input pipeline.

    ds = cnn.data.load("cifar10", validation_size=5000)
    x_all, y_all = cnn.data.put_on_devices(ds.train, mesh)
    batch_fn = cnn.data.make_train_batch_fn(len(ds.train), 128, augment="cifar",
                                            mean=ds.mean, std=ds.std, seed=0)
    images, labels = batch_fn(x_all, y_all, step)       # inside the jitted step
    for images, labels, mask in cnn.data.eval_batches(ds.eval, 500, mean=ds.mean,
                                                      std=ds.std): ...

See `sources` for the grammar of a source string, `pipeline` for the batch schedule
(the batch at step s is a pure function of the seed and s) and `augment` for the
augmentations by name.
"""
from cnn.data.augment import AUGMENTATIONS, HOST_AUGMENTATIONS
from cnn.data.pipeline import (StreamingBatches, batch_indices,
                               eval_batches, eval_steps, make_eval_batch_fn,
                               make_train_batch_fn, normalize, permute, place_batch,
                               process_rows, put_on_devices, steps_per_epoch)
from cnn.sharding import check_batch_size
from cnn.data.sources import Dataset, Split, carve_validation, channel_stats, load

__all__ = [
    "AUGMENTATIONS", "HOST_AUGMENTATIONS", "Dataset", "Split", "StreamingBatches",
    "batch_indices", "carve_validation", "channel_stats", "check_batch_size",
    "eval_batches", "eval_steps", "load", "make_eval_batch_fn", "make_train_batch_fn",
    "normalize", "permute", "place_batch", "process_rows", "put_on_devices",
    "steps_per_epoch",
]
