"""tensorstore_fs benchmarks: ``python -m benchmarks {core,loader,tf,suite,storage,all} [options]``.

``harness``         timing, repetitions, peak RSS, rates, ratios, reports: what every benchmark uses
``consume``         the consumer: batches checked, every page read, ids verified
``data``            the datasets (image, tabular, tokens): columns, generator, sources
``core``            write, scan and filter against plain pyarrow (``results/core.md``)
``loader``          the PyTorch loader against a raw read and Petastorm (``results/loader.md``)
``tfdata``          the tf.data adapter against the torch adapter and TFRecordDataset (``results/tf.md``)
``suite``           every system side by side (``results/suite.{md,json}``, ``results/suite_*.png``)
``storage``         S3 (SeaweedFS on loopback, a latency proxy, MosaicML Streaming and Lance) and
                    cold local disk against h5py (``results/storage.{md,json}``)
``latency_proxy``   the storage benchmark's request-delaying, request-counting TCP proxy
``pagecache``       evicting files' pages from the page cache and checking they are gone
``peer_venv``       a peer library's own virtualenv, created on first use (used by the two below)
``petastorm_venv``  Petastorm's own virtualenv; ``_petastorm_worker.py`` runs inside it
``storage_peers_venv``  MosaicML Streaming's and Lance's virtualenv; ``_storage_peers_worker.py`` runs inside it
``gpu_check.py``    a separate script for CUDA machines (pinned batches to the GPU)

Module-level imports of ``harness``, ``consume`` and ``data`` are the standard library only: the
Petastorm virtualenv (numpy 1.x) imports them.
"""
