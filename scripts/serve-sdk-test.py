#!/usr/bin/env python3
"""The official `openai` Python SDK, unmodified, against `inflight serve`: upload a file, create a batch, create
a second one while the first runs, poll both with batches.retrieve until they are completed, download the
output files with files.content, and check every custom_id appears exactly once and request_counts add up.

    scripts/serve-sdk-test.py --base-url http://127.0.0.1:8090/v1 [--api-key KEY] [--jobs 200] [--second 50]

Run it with the test bed's venv (`scripts/testbed.sh sdk` prints its python); exit 0 when every check holds,
1 with the failed check otherwise. The Rust test `serve::the_official_openai_sdk_*` starts serve and runs it.
"""
import argparse
import io
import json
import sys
import time

from openai import OpenAI


def lines(n, prefix, model, max_tokens):
    out = []
    for i in range(n):
        body = {"model": model, "messages": [{"role": "user", "content": f"Say the number {i}."}],
                "max_tokens": max_tokens, "temperature": 0}
        out.append(json.dumps({"custom_id": f"{prefix}{i}", "method": "POST", "url": "/v1/chat/completions",
                               "body": body}))
    return ("\n".join(out) + "\n").encode()


def check(cond, what):
    if not cond:
        print(f"serve-sdk-test: FAILED: {what}", file=sys.stderr)
        sys.exit(1)


def wait(client, batch_id, deadline, want=("completed",)):
    final = ("completed", "failed", "cancelled", "expired")
    seen = []
    while True:
        b = client.batches.retrieve(batch_id)
        if not seen or seen[-1] != b.status:
            seen.append(b.status)
        if b.status in final:
            check(b.status in want, f"batch {batch_id} ended {b.status}: {b.errors}")
            return b, seen
        check(time.monotonic() < deadline, f"batch {batch_id} still {b.status} at the deadline")
        time.sleep(0.2)


def output_of(client, batch, prefix, n):
    check(batch.output_file_id is not None, f"{batch.id} has an output file")
    text = client.files.content(batch.output_file_id).text
    records = [json.loads(l) for l in text.splitlines() if l.strip()]
    ids = [r["custom_id"] for r in records]
    check(len(ids) == len(set(ids)), f"{batch.id}: a custom_id appears twice")
    check(set(ids) == {f"{prefix}{i}" for i in range(n)}, f"{batch.id}: {len(set(ids))} of {n} custom_ids")
    check(all(r["response"]["status_code"] == 200 and r["error"] is None for r in records), "every answer is 200")
    rc = batch.request_counts
    check((rc.total, rc.completed, rc.failed) == (n, n, 0), f"{batch.id} request_counts {rc}")
    return records


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--api-key", default="local")
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--second", type=int, default=50)
    ap.add_argument("--model", default="SmolLM2-135M-Instruct")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--timeout", type=float, default=600)
    a = ap.parse_args()
    deadline = time.monotonic() + a.timeout
    client = OpenAI(base_url=a.base_url, api_key=a.api_key, max_retries=0)

    first_file = client.files.create(file=("first.jsonl", io.BytesIO(lines(a.jobs, "a", a.model, a.max_tokens))),
                                     purpose="batch")
    check(first_file.purpose == "batch" and first_file.bytes > 0, f"file object {first_file}")
    first = client.batches.create(input_file_id=first_file.id, endpoint="/v1/chat/completions",
                                  completion_window="24h", metadata={"test": "sdk"})
    check(first.status == "validating", f"a new batch is validating, not {first.status}")
    # The second batch is created while the first one runs.
    while client.batches.retrieve(first.id).status == "validating":
        check(time.monotonic() < deadline, "the first batch never started")
        time.sleep(0.05)
    second_file = client.files.create(
        file=("second.jsonl", io.BytesIO(lines(a.second, "b", a.model, a.max_tokens))), purpose="batch")
    second = client.batches.create(input_file_id=second_file.id, endpoint="/v1/chat/completions",
                                   completion_window="24h")

    first_done, first_seen = wait(client, first.id, deadline)
    second_done, _ = wait(client, second.id, deadline)
    output_of(client, first_done, "a", a.jobs)
    output_of(client, second_done, "b", a.second)
    check(second_done.in_progress_at >= first_done.completed_at, "the second batch ran after the first (FIFO)")
    check(first_done.metadata == {"test": "sdk"}, f"metadata kept: {first_done.metadata}")

    listed = [b.id for b in client.batches.list(limit=1)]  # the SDK follows `after` page by page
    check(listed[:2] == [second.id, first.id], f"batches.list newest first, all pages: {listed}")
    files = {f.id for f in client.files.list()}
    check({first_file.id, second_file.id, first_done.output_file_id} <= files, "files.list lists them")
    deleted = client.files.delete(second_file.id)
    check(deleted.deleted, "files.delete")
    print(json.dumps({"jobs": a.jobs, "second": a.second, "first_statuses": first_seen,
                      "request_counts": first_done.request_counts.model_dump(), "batches_listed": len(listed)}))


if __name__ == "__main__":
    main()
