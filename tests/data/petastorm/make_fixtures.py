#!/usr/bin/env python
"""Write the Petastorm test fixtures with the real Petastorm, and what Petastorm's own reader returns.

NOT run by the test suite, and never imported by tensorstore_fs. Run it by hand, once, with the
Petastorm 0.13.1 virtualenv (Python 3.11, numpy 1.x, pyarrow 14, pyspark, Java 17 on the machine)
and OpenCV on the path (Petastorm's ``CompressedImageCodec`` encodes and decodes with cv2; the
benchmark virtualenv does not ship it, so install it to a side folder)::

    benchmarks/.petastorm-venv/bin/python -m pip install --no-deps --target /tmp/pscv2 \
        "opencv-python-headless<4.11"
    PYTHONPATH=/tmp/pscv2 benchmarks/.petastorm-venv/bin/python tests/data/petastorm/make_fixtures.py

It writes, under ``tests/data/petastorm/``:

``extras/``
    A Petastorm dataset written the way Petastorm's docs show (``Unischema`` -> ``dict_to_spark_row``
    -> Spark local-mode DataFrame inside ``materialize_dataset``): every codec and the features the
    ``hello_world`` fixture lacks (JPEG and 16-bit / greyscale PNG images, Fortran-ordered arrays,
    nullable tensors, every Spark scalar type, a field without codec, a Decimal field).
``extras.expected.json`` / ``hello_world.expected.json``
    Every row as Petastorm's own ``make_reader`` decodes it (dummy pool, no shuffling), arrays as
    dtype + shape + base64 of their C-order bytes.
``extras.unischema.p0.pickle`` / ``extras.unischema.p2.pickle``
    The ``extras`` Unischema pickled with protocols 0 and 2, as Python 2-era Petastorm wrote it.

``hello_world/`` itself was written by Petastorm 0.13.1 elsewhere (Spark 4) and is only read here.
"""

from __future__ import annotations

import base64
import glob
import json
import os
import pickle
import shutil
import sys
from decimal import Decimal

HERE = os.path.dirname(os.path.abspath(__file__))
N_ROWS = 12


def unischema():
    import numpy as np
    from petastorm.codecs import CompressedImageCodec, CompressedNdarrayCodec, NdarrayCodec, ScalarCodec
    from petastorm.unischema import Unischema, UnischemaField
    from pyspark.sql import types as T

    return Unischema("ExtrasSchema", [
        UnischemaField("id", np.int32, (), ScalarCodec(T.IntegerType()), False),
        UnischemaField("tiny", np.int8, (), ScalarCodec(T.ByteType()), False),
        UnischemaField("small", np.int16, (), ScalarCodec(T.ShortType()), False),
        UnischemaField("big", np.int64, (), ScalarCodec(T.LongType()), False),
        UnischemaField("score", np.float32, (), ScalarCodec(T.FloatType()), False),
        UnischemaField("weight", np.float64, (), ScalarCodec(T.DoubleType()), True),
        UnischemaField("flag", np.bool_, (), ScalarCodec(T.BooleanType()), False),
        UnischemaField("label", np.str_, (), ScalarCodec(T.StringType()), True),
        UnischemaField("no_codec", np.uint16, (), None, False),
        UnischemaField("price", Decimal, (), ScalarCodec(T.DecimalType(10, 2)), False),
        UnischemaField("emb", np.float16, (4,), NdarrayCodec(), True),
        UnischemaField("fortran", np.float64, (3, 2), NdarrayCodec(), False),
        UnischemaField("points_z", np.int32, (None, 3), CompressedNdarrayCodec(), True),
        UnischemaField("img_jpeg", np.uint8, (16, 24, 3), CompressedImageCodec("jpeg", 90), False),
        UnischemaField("img_gray", np.uint8, (None, None), CompressedImageCodec("png"), False),
        UnischemaField("img16", np.uint16, (8, 8), CompressedImageCodec("png"), False),
    ])


def make_row(i: int) -> dict:
    import numpy as np

    rng = np.random.default_rng(1000 + i)
    yy, xx = np.mgrid[0:16, 0:24]
    jpeg = np.stack([(xx * 10 + i * 7) % 256, (yy * 15) % 256, (xx * yy + 40 * i) % 256], axis=-1).astype(np.uint8)
    h, w = 5 + i % 3, 7 + i % 4
    return {
        "id": np.int32(i),
        "tiny": np.int8(-100 + 17 * i),
        "small": np.int16(-30000 + 5000 * i),
        "big": np.int64(-(2**62) + i),
        "score": np.float32(0.1 * i - 0.55),
        "weight": None if i % 4 == 1 else np.float64(1.0 / (i + 3)),
        "flag": np.bool_(i % 3 == 0),
        "label": None if i % 5 == 2 else ("label-%d-" % i) + "\u00e9\u4e2d" * (i % 3),
        "no_codec": np.uint16(60000 + i),
        "price": Decimal("%d.%02d" % (i * 3, i)),
        "emb": None if i % 3 == 1 else rng.standard_normal(4).astype(np.float16),
        "fortran": np.asfortranarray(np.arange(6, dtype=np.float64).reshape(3, 2) * (i + 0.5)),
        "points_z": None if i == 5 else rng.integers(-1000, 1000, size=(i % 4, 3), dtype=np.int32),
        "img_jpeg": jpeg,
        "img_gray": rng.integers(0, 256, size=(h, w), dtype=np.uint8),
        "img16": rng.integers(0, 65536, size=(8, 8), dtype=np.uint16),
    }


def write_extras(path: str) -> None:
    from petastorm.etl.dataset_metadata import materialize_dataset
    from petastorm.unischema import dict_to_spark_row
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    schema = unischema()
    if os.path.exists(path):
        shutil.rmtree(path)
    url = "file://" + path
    spark = (SparkSession.builder.master("local[1]").appName("petastorm-fixtures")
             .config("spark.ui.enabled", "false")
             .config("spark.sql.shuffle.partitions", "2")
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    rows = [dict_to_spark_row(schema, make_row(i)) for i in range(N_ROWS)]
    with materialize_dataset(spark, url, schema, row_group_size_mb=1):
        df = spark.createDataFrame(spark.sparkContext.parallelize(rows, 2), schema.as_spark_schema())
        df.coalesce(2).write.mode("overwrite").parquet(url)
    spark.stop()
    for crc in glob.glob(os.path.join(path, ".*.crc")):
        os.remove(crc)  # Hadoop checksum side files: not part of the format


def encode_value(v):
    import numpy as np

    if v is None:
        return None
    if isinstance(v, np.ndarray):
        a = np.ascontiguousarray(v)
        return {"dtype": a.dtype.str, "shape": list(a.shape), "b64": base64.b64encode(a.tobytes()).decode()}
    if isinstance(v, np.str_):
        return {"dtype": "str", "value": str(v)}
    if isinstance(v, (np.bytes_, bytes)):
        return {"dtype": "bytes", "b64": base64.b64encode(bytes(v)).decode()}
    if isinstance(v, Decimal):
        return {"dtype": "Decimal", "value": str(v)}
    if isinstance(v, np.generic):
        return {"dtype": v.dtype.str, "value": v.item()}
    raise TypeError("unexpected decoded value %r (%s)" % (v, type(v)))


def read_expected(path: str, out_json: str) -> None:
    import cv2
    import numpy as np
    import petastorm
    import pyarrow
    from petastorm import make_reader

    rows = []
    with make_reader("file://" + path, reader_pool_type="dummy", shuffle_row_groups=False, num_epochs=1) as reader:
        fields = {name: str(f) for name, f in reader.schema.fields.items()}
        for row in reader:
            rows.append({k: encode_value(v) for k, v in row._asdict().items()})
    rows.sort(key=lambda r: r["id"]["value"])
    doc = {
        "written_by": "tests/data/petastorm/make_fixtures.py with petastorm.make_reader",
        "versions": {"petastorm": petastorm.__version__, "numpy": np.__version__, "pyarrow": pyarrow.__version__,
                     "opencv": cv2.__version__},
        "fields": fields,
        "rows": rows,
    }
    with open(out_json, "w") as fh:
        json.dump(doc, fh, indent=1, sort_keys=True)
        fh.write("\n")


def main() -> None:
    extras = os.path.join(HERE, "extras")
    write_extras(extras)
    for proto in (0, 2):
        with open(os.path.join(HERE, "extras.unischema.p%d.pickle" % proto), "wb") as fh:
            fh.write(pickle.dumps(unischema(), protocol=proto))
    read_expected(extras, os.path.join(HERE, "extras.expected.json"))
    read_expected(os.path.join(HERE, "hello_world"), os.path.join(HERE, "hello_world.expected.json"))


if __name__ == "__main__":
    main()
