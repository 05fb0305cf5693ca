"""Parquet reader: contract columns in record batches, each row numbered as its row number + 1."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from detector.readers.base import INPUT_FIELDS, RawBatch, ReaderError
from detector.readers.columns import RawColumn
from detector.readers.source import InputFile

BATCH_ROWS = 256 * 1024


def read_parquet(input_file: InputFile) -> Iterator[RawBatch]:
    """Yield raw batches of a Parquet file's contract columns.

    Parquet keeps its index at the end of the file, so a gzip-compressed file or
    a pipe is read into memory first, and a truncated gzip file cannot be read at all.
    """
    parquet_file = open_parquet(input_file)
    names = parquet_file.schema_arrow.names
    repeated = sorted({name for name in INPUT_FIELDS if names.count(name) > 1})
    if repeated:
        raise ReaderError(f"{input_file.name}: the Parquet file has more than one column named {', '.join(repeated)}; "
                          "write each column once")
    fields = [name for name in INPUT_FIELDS if name in names]
    total_rows = parquet_file.metadata.num_rows
    rows_read = 0
    bytes_reported = input_file.size if input_file.is_gzip else 0
    try:
        for batch in parquet_file.iter_batches(batch_size=BATCH_ROWS, columns=fields):
            columns = {name: RawColumn.from_arrow(batch.column(name)) for name in fields}
            lines = np.arange(rows_read + 1, rows_read + 1 + batch.num_rows, dtype=np.int64)
            rows_read += batch.num_rows
            bytes_reported = report_share(input_file, rows_read, total_rows, bytes_reported)
            yield RawBatch(columns, lines)
    except (pa.ArrowException, OSError) as error:
        raise ReaderError(f"{input_file.name}: cannot read Parquet row {rows_read + 1}: {error}") from None
    report_share(input_file, total_rows, total_rows, bytes_reported)


def open_parquet(input_file: InputFile) -> pq.ParquetFile:
    """Open the file's Parquet content, reading gzip or a pipe into memory first."""
    source = input_file.path
    if input_file.is_gzip or not input_file.is_regular:
        content = input_file.read_all()
        if input_file.gzip_error is not None:
            raise ReaderError(
                f"{input_file.name}: {input_file.gzip_error}; a Parquet file cannot be read without its end"
            )
        source = pa.BufferReader(content)
    try:
        return pq.ParquetFile(source)
    except (pa.ArrowException, OSError) as error:
        raise ReaderError(f"{input_file.name}: not a readable Parquet file: {error}") from None


def report_share(input_file: InputFile, rows_read: int, total_rows: int, bytes_reported: int) -> int:
    """Report progress in file bytes for the share of rows read and return the bytes reported so far."""
    if input_file.progress is None:
        return bytes_reported
    done = input_file.size if total_rows == 0 else input_file.size * rows_read // total_rows
    if done > bytes_reported:
        input_file.progress(done - bytes_reported)
    return max(done, bytes_reported)
