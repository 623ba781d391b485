"""The table of a run: rendered from Bench.results, printed, and written into BENCHMARKS.md.

- `machine()`: the machine, the code and the tools the figures came from
- `render()`: the table in Markdown (a machine line, one row per measurement, notes); its
  rows come in the order of the scenarios: GetProduct side by side, ListAvailableOffers,
  CreateProduct and CreateOffer, scale, StreamProducts, start-up and idle memory, overload, abuse,
  faults
- `publish()`: prints the table and, in a full run, `write_benchmarks()` puts it into
  BENCHMARKS.md between the BEGIN and END markers
- cell formats: `num`, `mib`, `per_1000`, `goal` (and runner.fmt_ms)
"""

import datetime
import os
import platform
import subprocess

import grpc

from . import runner
from .abuse import rows as abuse_rows
from .faults import rows as fault_rows
from .runner import (CALIBRATE_SECONDS, CLIENTS, CLK_TCK, FLAT_BOUND, LARGE, LIGHT_RPS, LOAD_CPU, MIB, QUICK, ROOT,
                     RUN_SECONDS, SERVER_CPU, SMALL, STARTS, STREAM_REPEATS, STREAMS, Bench, fmt_ms, log)

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"

HEAD = (
    "| measurement | result | against the reference | p50 ms | p99 ms | p99 ms at 80 % | "
    f"p50 / p99 ms at {LIGHT_RPS} req/s | server CPU µs per call | context switches per call | memory MiB | "
    "other processes on the server core | idle: server core / load core | goal |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def publish(bench: Bench, info: dict, extra: dict, pg_skip) -> None:
    """Prints the table (and the checks that failed); writes it into BENCHMARKS.md unless BENCH_QUICK=1."""
    table = render(bench, info, extra, pg_skip)
    print()
    print(table)
    if bench.failures:
        print("\nChecks that failed:\n" + "\n".join(f"- {f}" for f in bench.failures))
    if QUICK:
        log("BENCH_QUICK=1: a smoke run; BENCHMARKS.md is left as it is")
    else:
        write_benchmarks(table)
        log("BENCHMARKS.md updated")


def write_benchmarks(table: str) -> None:
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")


def machine() -> dict:
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    git = ["git", "-C", str(ROOT)]
    commit = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    changed = subprocess.run(git + ["status", "--porcelain", "--", "services", "src", "proto"], capture_output=True,
                             text=True).stdout.strip()
    h2load = subprocess.run(["h2load", "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "memory": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "rustc": rustc,
        "code": f"{commit or 'unknown'}" + (", with uncommitted changes in services/, src/ or proto/" if changed
                                           else ", services/, src/ and proto/ as committed"),
        "h2load": h2load,
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
    }


# ---------------------------------------------------------------- cells


def num(v: float) -> str:
    return f"{v:,.0f}"


def mib(b) -> str:
    return "–" if b is None else f"{b / MIB:.1f}"


def per_1000(stream: dict) -> str:
    """Server CPU per 1,000 streamed rows, when the run was long enough for clock ticks to tell."""
    if stream["cpu_s"] < 20 / CLK_TCK:
        return "– (too short to tell)"
    return f"{stream['cpu_us_per_1000']:,.0f} per 1,000 rows"


def goal(met: bool) -> str:
    return "met" if met else "**missed**"


def against_bound(rate: float, reference: float, bound: float, want: float) -> str:
    """A goal of `want`× the reference, and the bound: the least program that does the unavoidable
    work. Out of that program's reach too, the goal is bounded by it."""
    if rate >= want * reference:
        return goal(True)
    # A bound the catalog outruns is not the least program: it proves nothing.
    if bound < want * reference and rate <= bound:
        return f"bounded: the contract's bound serves {bound / reference:.2f}×, the catalog {rate / bound:.2f}× of it"
    return f"{goal(False)} (the contract's bound {bound / reference:.2f}×, the catalog {rate / bound:.2f}× of it)"


# ---------------------------------------------------------------- the table


class Rows:
    """The table's rows so far, one cell per column of HEAD; `request` fills one from a Bench result."""

    def __init__(self, results: dict):
        self.r, self.lines = results, []
        self.bare = results["bare"]["rps"]

    def add(self, measure, result, vs, p50="–", p99="–", p99_80="–", cpu="–", mem="–", goals="–", other="–",
            cs="–", light="–", idle="–"):
        self.lines.append(f"| {measure} | {result} | {vs} | {p50} | {p99} | {p99_80} | {light} | {cpu} | {cs} "
                          f"| {mem} | {other} | {idle} | {goals} |")

    def request(self, key, vs=None, goals="–", cpu=None):
        x = self.r[key]
        mark = "" if x.get("checked", True) else " ⚠"
        rounds = f" (median of {' / '.join(num(v) for v in x['rounds'])})" if len(x.get("rounds", [])) > 1 else ""
        self.add(x["label"] + mark, f"{num(x['rps'])} req/s{rounds}", vs or f"{x['rps'] / self.bare:.2f}× bare",
                 fmt_ms(x["p50"]), fmt_ms(x["p99"]), fmt_ms(x.get("p99_80")),
                 cpu or f"{sum(x['cpu_us'].values()):.1f}", mib(max(x["peak_rss"].values())), goals,
                 f"{x['foreign']:.0%}", f"{x['cs']:.1f}",
                 f"{fmt_ms(x['p50_light'])} / {fmt_ms(x['p99_light'])}" if "p50_light" in x else "–",
                 f"{x['idle_server']:.0%} / {x['idle_load']:.0%}")


def render(bench: Bench, info: dict, extra: dict, pg_skip) -> str:
    rows = Rows(bench.results)
    getproduct_rows(rows, pg_skip)
    offers_rows(rows, extra)
    replicas_rows(rows)
    scale_rows(rows)
    stream_rows(rows)
    startup_rows(rows)
    overload_row(rows)
    events_rows(rows)
    abuse_rows(rows)
    fault_rows(rows)
    notes = [f"- {n}" for n in table_notes(bench)]
    return "\n".join([machine_line(info), "", HEAD, *rows.lines, "", *notes])


def getproduct_rows(rows: Rows, pg_skip) -> None:
    r, bare = rows.r, rows.bare
    py = r["python"]["rps"]
    rows.request("bare", vs="1.00 (reference)", goals=f"p99 < 2 ms at 80 %: {goal(r['bare']['p99_80'] < 2)}")
    rows.request("python", vs=f"{py / bare:.3f}× bare",
                 goals=f"p99 < 2 ms at 80 %: {goal(r['python']['p99_80'] < 2)}")
    bound = r["bare_contract"]["rps"]
    rows.request("bare_contract", vs=f"{bound / bare:.2f}× bare (the bound of the row below)",
                 goals=f"p99 < 2 ms at 80 %: {goal(r['bare_contract']['p99_80'] < 2)}")
    g = r["get_sqlite"]
    rows.request("get_sqlite", vs=f"{g['rps'] / bare:.2f}× bare, {g['rps'] / bound:.2f}× the contract's bound, "
                                  f"{g['rps'] / py:.1f}× Python",
                 goals=f"≥ 0.75× bare: {against_bound(g['rps'], bare, bound, 0.75)}; "
                       f"≥ 10× Python: {goal(g['rps'] >= 10 * py)}; p99 < 2 ms at 80 %: {goal(g['p99_80'] < 2)}")
    g_cpu = sum(g["cpu_us"].values())
    w = r["get_web"]
    rows.request("get_web", vs=f"{w['rps'] / g['rps']:.2f}× the same catalog over gRPC; gRPC-Web costs "
                               f"{sum(w['cpu_us'].values()) - g_cpu:+.1f} µs CPU a call",
                 goals=f"p99 < 2 ms at 80 %: {goal(w['p99_80'] < 2)}")
    bare_tls = r["bare_tls"]["rps"]
    rows.request("bare_tls", vs=f"{bare_tls / bare:.2f}× plaintext bare (reference of the rows below)",
                 goals=f"p99 < 2 ms at 80 %: {goal(r['bare_tls']['p99_80'] < 2)}")
    bound_secure = r["bare_contract_secure"]["rps"]
    rows.request("bare_contract_secure", vs=f"{bound_secure / bare_tls:.2f}× bare with TLS (the bound of the "
                                            f"catalog with TLS and a token)",
                 goals=f"p99 < 2 ms at 80 %: {goal(r['bare_contract_secure']['p99_80'] < 2)}")
    for key, what, want in (("get_tls", "TLS", 0.6), ("get_secure", "TLS and token checks", 0.7)):
        x = r[key]
        x_cpu = sum(x["cpu_us"].values())
        met = (against_bound(x["rps"], bare_tls, bound_secure, want) if key == "get_secure"
               else goal(x["rps"] >= want * bare_tls))
        rows.request(key, vs=f"{x['rps'] / bare_tls:.2f}× bare with TLS; {x['rps'] / g['rps']:.2f}× plaintext; "
                             f"{what} cost {x_cpu - g_cpu:+.1f} µs CPU a call",
                     goals=f"≥ {want}× bare with TLS: {met}; p99 < 2 ms at 80 %: {goal(x['p99_80'] < 2)}")
    for key, what in (("get_traced", "traces of every call"), ("get_traced_1", "traces of 1 % of calls")):
        x = r[key]
        x_cpu = sum(x["cpu_us"].values())
        rows.request(key, vs=f"{x['rps'] / g['rps']:.2f}× without traces; {what} cost {x_cpu - g_cpu:+.1f} µs CPU a call",
                     goals=f"p99 < 2 ms at 80 %: {goal(x['p99_80'] < 2)}")
    if "get_postgres" in r:
        p = r["get_postgres"]
        rows.request("get_postgres", vs=f"{p['rps'] / bare:.2f}× bare, {p['rps'] / py:.1f}× Python",
                     cpu=f"{sum(p['cpu_us'].values()):.1f} + {p['extra_cpu_us']:.1f} in PostgreSQL",
                     goals=f"≥ 0.4× bare: {goal(p['rps'] >= 0.4 * bare)}; "
                           f"p99 < 2 ms at 80 %: {goal(p['p99_80'] < 2)}")
    else:
        rows.add("Agora catalog, GetProduct, PostgreSQL", f"skipped: {pg_skip}", "–")


def offers_rows(rows: Rows, extra: dict) -> None:
    r = rows.r
    g, a = r["get_sqlite"], r["available"]
    rows.request("available", vs=f"{a['rps'] / g['rps']:.3f}× catalog GetProduct on SQLite "
                                 f"({extra.get('available_count', '?')} offers an answer)",
                 goals=f"≥ 0.5× GetProduct: {goal(a['rps'] >= 0.5 * g['rps'])}; "
                       f"p99 < 2 ms at 80 %: {goal(a['p99_80'] < 2)}")
    for what in ("product", "offer"):
        normal, full = r[f"create_{what}_normal"], r[f"create_{what}_full"]
        asked = (f"; the catalog asked {normal['upstream_calls']:.0f} times (the product is known from its feed)"
                 if what == "offer" else "; the catalog alone")
        rows.request(f"create_{what}_normal", vs=f"1.00 (reference of the row below){asked}",
                     goals=f"≥ 5,000/s: {goal(normal['rps'] >= 5000)}")
        rows.request(f"create_{what}_full", vs=f"{full['rps'] / normal['rps']:.2f}× synchronous=normal",
                     goals="– (what power-loss durability costs)")
        if what == "product" and "create_product_followed" in r:
            f = r["create_product_followed"]
            lag = "never, within the bound" if f["caught_up"] is None else f"{f['caught_up'] * 1000:,.0f} ms"
            rows.request("create_product_followed",
                         vs=f"{f['rps'] / normal['rps']:.2f}× the catalog alone; consumers at the head {lag} "
                            "after the load (offers, shopping and customers on the load core)",
                         cpu=f"{sum(f['cpu_us'].values()):.1f} (the catalog {f['cpu_us'].get('catalog-followed', 0):.1f})",
                         goals=f"≥ 4,000/s: {goal(f['rps'] >= 4000)}; lag 0 within 2 s: "
                               f"{goal(f['caught_up'] is not None and f['caught_up'] <= 2)}")


def events_rows(rows: Rows) -> None:
    """The feeds on JetStream against Watch streams: the producer's rate and CPU an event with 1, 4 and 16
    consumers following; offers applying a backlog from JetStream's partitions with 1 and 3 replicas."""
    r = rows.r
    if "skipped" in r.get("events", {}):
        rows.add("Agora catalog, CreateProduct with consumers following, Watch streams and JetStream",
                 f"skipped: {r['events']['skipped']}", "–")
        return
    for n in (1, 4, 16):
        watch, jet = r.get(f"followed_watch_{n}"), r.get(f"followed_jetstream_{n}")
        if not (watch and jet):
            continue
        for x, other in ((watch, None), (jet, watch)):
            lag = "never, within the bound" if x["caught_up"] is None else f"{x['caught_up'] * 1000:,.0f} ms"
            nats = f"; nats-server {x['nats_us_event']:.1f} µs an event" if x["nats_us_event"] is not None else ""
            vs = (f"{x['rps'] / other['rps']:.2f}× Watch streams; catalog CPU an event "
                  f"{x['producer_us_event'] / other['producer_us_event']:.2f}× Watch streams" if other
                  else "1.00 (reference of the row below)")
            rows.request(f"followed_{'jetstream' if other else 'watch'}_{n}",
                         vs=f"{vs}; consumers at the head {lag} after the load{nats}",
                         cpu=f"{x['producer_us_event']:.1f} an event (the catalog, catch-up included)")
    one, three = r.get("apply_1"), r.get("apply_3")
    if one is None or three is None:
        why = r.get("apply", {}).get("skipped", "not measured")
        rows.add("Agora offers applying the catalog's events from JetStream, PostgreSQL, 1 and 3 replicas",
                 f"skipped: {why}", "–")
        return
    for x in (one, three):
        rate = "not caught up within the bound" if x["rate"] is None else f"{num(x['rate'])} events/s"
        vs = ("1.00 (reference of the row below)" if x is one else
              f"{x['rate'] / one['rate']:.2f}× one replica" if x["rate"] and one["rate"] else "–")
        if x["seconds"] is not None:
            vs += f"; the last event applied {x['seconds']:.2f} s after the start"
        rows.add(f"Agora offers applying {x['events']:,} catalog events from JetStream (8 partitions), PostgreSQL, "
                 f"{x['replicas']} replica{'s' if x['replicas'] > 1 else ''} (rate between 10 and 90 %)", rate,
                 f"{vs}; partitions per replica {x['shares']}")


def replicas_rows(rows: Rows) -> None:
    """Offers with one, then two replicas on one PostgreSQL database: two cores cannot scale, the row
    shows that nothing collapses (locks, polling, connections)."""
    r = rows.r
    if "replicas_1" not in r:
        why = r.get("replicas", {}).get("skipped", "not measured")
        rows.add("Agora offers, ListAvailableOffers, PostgreSQL, 1 and 2 replicas", f"skipped: {why}", "–")
        return
    one, two = r["replicas_1"], r["replicas_2"]
    cpu_one = sum(one["cpu_us"].values())
    get_pg = r.get("get_postgres")
    vs_get = (f"; {one['rps'] / get_pg['rps']:.3f}× catalog GetProduct on PostgreSQL" if get_pg else "")
    rows.request("replicas_1", vs=f"1.00 (reference of the row below){vs_get}; {one['sessions']} PostgreSQL "
                                  f"sessions, {one['opened']:.1f} opened a second while idle",
                 cpu=f"{cpu_one:.1f} (PostgreSQL included)",
                 goals=f"≥ 0.5× GetProduct on PostgreSQL: {goal(one['rps'] >= 0.5 * get_pg['rps'])}"
                 if get_pg else "–")
    ratio = two["rps"] / one["rps"]
    mark = "" if two["checked"] and not two["failed"] else " ⚠"
    rows.add(two["label"] + mark, f"{num(two['rps'])} req/s", f"{ratio:.2f}× one replica; {two['sessions']} "
             f"PostgreSQL sessions, {two['opened']:.1f} opened a second while idle", fmt_ms(two["p50"]),
             fmt_ms(two["p99"]), cpu=f"{two['cpu_us_call']:.1f} (PostgreSQL included)",
             goals=f"nothing collapses (≥ 0.8× one replica, no session churn): "
                   f"{goal(ratio >= 0.8 and two['opened'] < 0.5)}")


def scale_rows(rows: Rows) -> None:
    for kind in ("get", "list"):
        s, l = rows.r[f"scale_{kind}_small"], rows.r[f"scale_{kind}_large"]
        rows.request(f"scale_{kind}_small", vs="1.00 (reference of the row below)")
        ratio = l["rps"] / s["rps"]
        rows.request(f"scale_{kind}_large", vs=f"{ratio:.2f}× the {SMALL:,}-product row",
                     goals=f"flat (≥ 0.8×): {goal(ratio >= 0.8)}")


def stream_rows(rows: Rows) -> None:
    sp, sh, sb = rows.r["stream_python"], rows.r["stream_h2load"], rows.r["stream_bound"]
    # Flat: the peak stays within a fixed bound, whatever the size of the catalog streamed.
    flat = sh["hwm"] - sh["rss_before"]
    # A goal out of reach of the least program that does the unavoidable work is bounded by it.
    if sh["rows_s"] >= 500_000:
        speed = goal(True)
    elif sb["rows_s"] < 500_000:
        speed = (f"bounded: the least program on sqlx reads {num(sb['rows_s'])} rows/s, the catalog "
                 f"{sh['rows_s'] / sb['rows_s']:.2f}× of it")
    else:
        speed = goal(False)
    rows.add(f"StreamProducts, {LARGE:,} products, h2load reader" + ("" if sh["checked"] else " ⚠"),
             f"{num(sh['rows_s'])} rows/s", f"{sh['seconds']:.2f} s a stream", "–", "–", "–",
             per_1000(sh),
             f"{mib(sh['rss_before'])} before, peak {mib(sh['hwm_after_python'])} after 1 stream, "
             f"{mib(sh['hwm'])} after {1 + STREAM_REPEATS}",
             f"≥ 500,000 rows/s: {speed}; flat memory (+{mib(flat)} MiB while streaming "
             f"{1 + STREAM_REPEATS} × {sh['stream_bytes'] / 1e6:,.0f} MB, bound {FLAT_BOUND // MIB} MiB): "
             f"{goal(flat < FLAT_BOUND)}")
    rows.add(f"StreamProducts, {LARGE:,} products, bare tonic and one sqlx statement (the bound), h2load reader"
             + ("" if sb["checked"] else " ⚠"),
             f"{num(sb['rows_s'])} rows/s", f"{sb['seconds']:.2f} s a stream", "–", "–", "–", per_1000(sb), "–",
             f"the catalog {sh['rows_s'] / sb['rows_s']:.2f}× of it" if sb["rows_s"] else "–")
    rows.add(f"StreamProducts, {LARGE:,} products, Python grpcio reader" + ("" if sp["checked"] else " ⚠"),
             f"{num(sp['rows_s'])} rows/s", f"{sp['seconds']:.2f} s a stream", "–", "–", "–",
             per_1000(sp), f"peak {mib(sh['hwm_after_python'])}",
             "– (the pace of a Python client)")


def startup_rows(rows: Rows) -> None:
    for name, s in rows.r["startup"].items():
        rows.add(f"start-up and idle: agora-{name}", f"SERVING in {s['median']:.1f} ms (median of {STARTS})",
                 f"p90 {s['p90']:.1f} ms; new database (migrations) {s['first']:.1f} ms", "–", "–", "–", "–",
                 f"{mib(s['idle_rss'])} idle",
                 f"< 100 ms: {goal(s['median'] < 100)}; < 15 MiB: {goal(s['idle_rss'] < 15 * MIB)}")


def overload_row(rows: Rows) -> None:
    o = rows.r["overload"]
    total = sum(o["grpc_codes"].values())
    re_ = o["grpc_codes"].get("RESOURCE_EXHAUSTED", 0)
    ok_s = o["grpc_codes"].get("OK", 0) / max(1e-9, o["seconds"])
    served = ok_s / o["capacity"] if o["capacity"] else 0
    rounds = " / ".join(f"{r:.2f}" for r in o.get("served_rounds", []))
    rows.add(o["label"],
             f"{num(o['rps'])} answers/s, {ok_s:,.0f} OK/s: {served:.2f}× the {num(o['capacity'])} req/s "
             f"at the limit" + (f" (median round of {rounds})" if len(o.get("served_rounds", [])) > 1 else ""),
             f"{re_ / max(1, total):.0%} shed RESOURCE_EXHAUSTED (shed counter {o['shed']:,.0f}), "
             f"other errors {total - re_ - o['grpc_codes'].get('OK', 0):,.0f}",
             fmt_ms(o["p50"]), fmt_ms(o["p99"]), "–", f"{sum(o['cpu_us'].values()):.1f}",
             mib(max(o["peak_rss"].values())),
             f"OK ≥ 0.8× capacity: {goal(served >= 0.8)}; "
             f"health SERVING {o['polls_serving']}/{o['polls']} polls (slowest {o['poll_max_ms']:.0f} ms): "
             f"{goal(o['polls'] > 0 and o['polls_serving'] == o['polls'])}", f"{o['foreign']:.0%}", f"{o['cs']:.1f}",
             idle=f"{o['idle_server']:.0%} / {o['idle_load']:.0%}")


def machine_line(info: dict) -> str:
    return (
        f"Machine: {info['nproc']} cores, {info['cpu']}, {info['memory']} RAM, Linux {info['kernel']}; "
        f"load average at the start {info['load']}; {info['date']}. Code: {info['code']}. {info['rustc']}, "
        f"{info['h2load']}, Python {info['python']} with grpcio {info['grpcio']}."
    )


def table_notes(bench: Bench) -> list[str]:
    """How the figures were taken, and what they are worth (the notes below the table)."""
    notes = [
        f"Servers pinned to core {SERVER_CPU}, h2load (one thread) and the harness to core {LOAD_CPU}"
        if runner.PINNED else "Not pinned (fewer than two cores).",
        f"h2load -c {CLIENTS} -m {STREAMS} ({CLIENTS * STREAMS} calls in flight) for capacity, each run about "
        f"{RUN_SECONDS:g} s after a {CALIBRATE_SECONDS} s calibration; the 80 % run uses the same connections "
        f"paced with --rps (h2load sends each connection's share in bursts every 10 ms).",
        "Cargo profile dist (fat LTO, one codegen unit: what the images ship) for every server; services at their defaults (log level info, text).",
        "CPU per call is utime + stime of the server process(es) over the capacity run, divided by the calls.",
    ]
    if bench.failures:
        notes.append("Checks that failed (⚠): " + "; ".join(bench.failures))
    else:
        notes.append("Checks: every call kind answered grpc-status 0 with the expected content to a grpcio client "
                     "before and after its runs, and the services' metrics counted no other code than OK during "
                     "the runs (RESOURCE_EXHAUSTED aside in the overload run).")
    if QUICK:
        notes.append("BENCH_QUICK=1: smoke run with small counts; not figures to compare.")
    if os.environ.get("BENCH_BUILD", "1") == "0":
        notes.append("BENCH_BUILD=0: binaries from target/dist as they were, not built from the code named above.")
    return notes
