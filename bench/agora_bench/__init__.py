"""The harness behind `make bench` (bench/run.py is its entry point). Each module uses only
the ones listed before it:

  runner      settings (sizes, durations, cores), processes and servers, /proc and metrics
              readings, the generated gRPC client, h2load, and Bench: one checked measurement
  data        the catalog and offers data measured on (SQLite files, a PostgreSQL database)
  references  the bare tonic server and the Python grpc.aio peer the catalog is compared with
  report      the table: rendered, printed, written into BENCHMARKS.md
  scenarios   the measurements, one function each, and run_all, which runs them in order
"""
