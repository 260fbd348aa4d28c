#!/usr/bin/env python3
"""Drover as a non-Rust client sees it: GetJob latency and submit -> start pickup from a
Python grpcio client.

Stubs are generated from proto/ at run time into a temporary directory (grpcio-tools'
protoc); nothing generated is kept. Prints one JSON object on stdout:
  {"getjob_ms": [...], "pickup_ms": [...], "grpcio": "<version>"}

Usage: client_latency.py --proto-root DIR --addr HOST:PORT --token T --stamp-argv JSON
                         --samples N
The token is read from the DROVER_TOKEN environment variable when --token is not given.
"""

import argparse
import importlib
import json
import os
import sys
import tempfile
import time


def generate_stubs(proto_root, out):
    import grpc_tools
    from grpc_tools import protoc

    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    rc = protoc.main(
        [
            "protoc",
            "-I" + proto_root,
            "-I" + well_known,
            "--python_out=" + out,
            "--grpc_python_out=" + out,
            "drover/v1/drover.proto",
        ]
    )
    if rc != 0:
        raise SystemExit("client_latency.py: protoc failed with status %d" % rc)
    sys.path.insert(0, out)
    pb = importlib.import_module("drover.v1.drover_pb2")
    rpc = importlib.import_module("drover.v1.drover_pb2_grpc")
    return pb, rpc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proto-root", required=True)
    ap.add_argument("--addr", required=True)
    ap.add_argument("--token", default=os.environ.get("DROVER_TOKEN", ""))
    ap.add_argument("--stamp-argv", required=True, help="JSON list: a program printing unix ns")
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--idle-ms", type=float, default=20.0)
    a = ap.parse_args()
    if a.samples < 1 or a.samples > 100000:
        raise SystemExit("client_latency.py: --samples must be 1 to 100000")

    import grpc

    with tempfile.TemporaryDirectory(prefix="drover-pystubs-") as out:
        pb, rpc = generate_stubs(a.proto_root, out)
        from google.protobuf import duration_pb2
        channel = grpc.insecure_channel(a.addr)
        grpc.channel_ready_future(channel).result(timeout=30)
        jobs = rpc.JobServiceStub(channel)
        md = (("authorization", "Bearer " + a.token),)
        argv = json.loads(a.stamp_argv)

        pickup = []
        last = None
        for _ in range(a.samples):
            spec = pb.JobSpec(argv=argv)
            job = jobs.SubmitJob(pb.SubmitJobRequest(spec=spec), metadata=md).job
            returned = time.time_ns()
            wait = pb.WaitJobRequest(id=job.id, timeout=duration_pb2.Duration(seconds=60))
            done = jobs.WaitJob(wait, metadata=md).job
            if done.state != pb.JOB_STATE_SUCCEEDED:
                raise SystemExit("client_latency.py: job %s ended in state %d" % (job.id, done.state))
            first = next(iter(jobs.StreamLogs(pb.StreamLogsRequest(job_id=job.id, attempt=1), metadata=md)))
            stamp = int(first.chunk.data.decode().splitlines()[0].strip())
            pickup.append((stamp - returned) / 1e6)
            last = job.id
            time.sleep(a.idle_ms / 1000.0)

        getjob = []
        req = pb.GetJobRequest(id=last)
        for _ in range(a.samples):
            t0 = time.perf_counter_ns()
            jobs.GetJob(req, metadata=md)
            getjob.append((time.perf_counter_ns() - t0) / 1e6)
            time.sleep(a.idle_ms / 1000.0)
        channel.close()
    print(json.dumps({"getjob_ms": getjob, "pickup_ms": pickup, "grpcio": grpc.__version__}))


if __name__ == "__main__":
    main()
