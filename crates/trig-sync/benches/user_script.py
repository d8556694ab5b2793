"""What a user would write instead of trig-databricks: the events view into
SQLite with the official Databricks SDK for Python.

EXTERNAL_LINKS + ARROW_STREAM (the SDK's fast path), every chunk downloaded
with requests and decoded by pyarrow, rows inserted with sqlite3's
executemany into a 7-column table whose primary key is the event id
(INSERT OR IGNORE: a re-run deduplicates), one transaction per chunk.
It does no identity matching, no parking, no quarantine, no cursor.

Usage: python user_script.py HOST TOKEN WAREHOUSE_ID DB_PATH
Prints one JSON line: {"rows": N, "seconds": S}.
"""

import json
import sqlite3
import sys
import time

import pyarrow as pa
import requests
from databricks.sdk import WorkspaceClient
from databricks.sdk.service.sql import Disposition, Format, StatementState

SQL = """SELECT event_id, event_name, CAST(event_ts AS STRING) AS event_ts, user_id, email,
                to_json(properties) AS properties, platform
         FROM main.product.events_v"""


def main() -> None:
    host, token, warehouse, db = sys.argv[1:5]
    start = time.perf_counter()
    w = WorkspaceClient(host=host, token=token)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS events (event_id TEXT PRIMARY KEY, event_name TEXT, event_ts TEXT,"
        " user_id TEXT, email TEXT, properties TEXT, platform TEXT)"
    )
    resp = w.statement_execution.execute_statement(
        statement=SQL,
        warehouse_id=warehouse,
        disposition=Disposition.EXTERNAL_LINKS,
        format=Format.ARROW_STREAM,
        wait_timeout="30s",
    )
    while resp.status.state in (StatementState.PENDING, StatementState.RUNNING):
        time.sleep(0.2)
        resp = w.statement_execution.get_statement(resp.statement_id)
    if resp.status.state != StatementState.SUCCEEDED:
        raise SystemExit(f"statement {resp.status.state}: {resp.status.error}")
    rows = 0
    result = resp.result
    http = requests.Session()
    while result is not None:
        for link in result.external_links or []:
            body = http.get(link.external_link, timeout=60)
            body.raise_for_status()
            table = pa.ipc.open_stream(body.content).read_all()
            with conn:
                conn.executemany("INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?, ?, ?)", zip(*table.to_pydict().values()))
            rows += table.num_rows
            nxt = link.next_chunk_index
            result = w.statement_execution.get_statement_result_chunk_n(resp.statement_id, nxt) if nxt is not None else None
            break
        else:
            result = None
    conn.close()
    print(json.dumps({"rows": rows, "seconds": time.perf_counter() - start}))


if __name__ == "__main__":
    main()
