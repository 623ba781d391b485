"""The data the benchmark measures on, prepared before any measurement.

`prepare()` makes all of it and returns it as a `Data`:

- catalog SQLite files of SMALL and LARGE products (the catalog service creates the
  schema with its migrations, then SQL fills it)
- a PostgreSQL database with SMALL products, created at POSTGRES_URL and dropped at the
  end by run.py (skipped, with the reason, when psql or the server is missing)
- an offers SQLite file of OFFERS offers

Also the helpers the measurements use on that data: `product_id`, `expected_available`
(the answer ListAvailableOffers must give), `psql` and `postgres_backends_cpu`.
"""

import os
import shutil
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .runner import LARGE, OFFERS, SMALL, Procs, cpu_seconds, log, start_service

POSTGRES_URL = os.environ.get("AGORA_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")


@dataclass
class Data:
    """What prepare() made: the files, and the PostgreSQL database or why there is none."""

    small_db: Path  # catalog, SMALL products
    large_db: Path  # catalog, LARGE products (small_db itself when LARGE == SMALL)
    offers_db: Path  # offers, OFFERS offers around `now`
    now: int  # µs since the epoch: the time the offers were laid out around
    pg_db: str | None  # the PostgreSQL database (None when skipped)
    pg_url: str | None
    pg_skip: str | None  # why PostgreSQL was skipped


def prepare(procs: Procs, work: Path, created: list) -> Data:
    """Makes every file and database; a PostgreSQL database created is appended to `created`."""
    log(f"preparing data: catalogs of {SMALL:,} and {LARGE:,} products, {OFFERS:,} offers")
    small_db, large_db = catalog_files(procs, work)
    pg_db, pg_url, pg_skip = postgres_catalog(procs, created)
    offers_db = work / "offers-read.db"
    offers_schema(procs, offers_db)
    now = int(time.time() * 1e6)
    fill_offers_sqlite(offers_db, now)
    return Data(small_db, large_db, offers_db, now, pg_db, pg_url, pg_skip)


def catalog_files(procs: Procs, work: Path) -> tuple[Path, Path]:
    """The small and large catalog SQLite files (one file when LARGE == SMALL)."""
    small_db = work / "catalog-small.db"
    catalog_schema(procs, f"sqlite:{small_db}")
    fill_catalog_sqlite(small_db, SMALL)
    if LARGE != SMALL:
        large_db = work / "catalog-large.db"
        catalog_schema(procs, f"sqlite:{large_db}")
        started = time.monotonic()
        fill_catalog_sqlite(large_db, LARGE)
        log(f"{LARGE:,} products inserted in {time.monotonic() - started:.1f} s")
    else:
        large_db = small_db
    return small_db, large_db


def postgres_catalog(procs: Procs, created: list) -> tuple[str | None, str | None, str | None]:
    """A new PostgreSQL database with SMALL products: (database, url, None), or (None, None, why not)."""
    pg_skip = None
    if shutil.which("psql") is None:
        pg_skip = "psql is not installed"
    else:
        try:
            psql(POSTGRES_URL, "SELECT 1", bound=10)
        except Exception as err:
            pg_skip = f"PostgreSQL unreachable at {POSTGRES_URL}: {err}"
    if pg_skip is not None:
        log(f"PostgreSQL skipped: {pg_skip}")
        return None, None, pg_skip
    pg_db = f"agora_bench_{os.getpid()}"
    created.append(pg_db)
    psql(POSTGRES_URL, f"CREATE DATABASE {pg_db}")
    # Plaintext to PostgreSQL on loopback, as before the services spoke TLS to it (sqlx's
    # default, `prefer`, now would): the rows compare the services, not PostgreSQL's TLS.
    pg_url = POSTGRES_URL.split("?", 1)[0].rsplit("/", 1)[0] + "/" + pg_db + "?sslmode=disable"
    catalog_schema(procs, pg_url)
    psql(pg_url, PRODUCT_SQL_POSTGRES.format(count=SMALL, base=int(time.time() * 1e6) - 10_000_000_000))
    return pg_db, pg_url, None


def catalog_schema(procs: Procs, db_url: str) -> None:
    """Lets the catalog create its schema (migrations) on a new database, then stops it."""
    s = start_service(procs, "catalog-migrate", "catalog", db_url, AGORA_LOG="warn")
    try:
        s.wait_serving()
    finally:
        s.stop()


def offers_schema(procs: Procs, path: Path) -> None:
    """Lets the offers service create its schema on a new SQLite file (upstreams unreachable), then stops it."""
    s = start_service(procs, "offers-migrate", "offers", f"sqlite:{path}", AGORA_LOG="error",
                      AGORA_CATALOG_ADDRS="http://127.0.0.1:9", AGORA_CUSTOMERS_ADDRS="http://127.0.0.1:9")
    try:
        s.wait_serving()
    finally:
        s.stop()


def product_id(i: int) -> str:
    return f"prd_{i:032x}"


PRODUCT_SQL_SQLITE = """
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {count})
INSERT INTO products (product_id, display_name, description, family_id, currency_code, amount_minor,
                      state, revision, create_time, update_time)
SELECT printf('prd_%032x', i), 'Product ' || i,
       'A product of the benchmark catalog, number ' || i || ', with a description of an ordinary length.',
       printf('fam_%032x', 1 + i % 10), 'EUR', 100 + (i * 37) % 100000, 'ACTIVE', 1, {base} + i, {base} + i
FROM n
"""

FAMILY_SQL_SQLITE = """
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10)
INSERT INTO families (family_id, display_name, description, create_time)
SELECT printf('fam_%032x', i), 'Family ' || i, 'A family of the benchmark catalog', {base} + i FROM n
"""

PRODUCT_SQL_POSTGRES = """
INSERT INTO families (family_id, display_name, description, create_time)
SELECT 'fam_' || lpad(to_hex(i), 32, '0'), 'Family ' || i, 'A family of the benchmark catalog', {base} + i
FROM generate_series(1, 10) AS i;
INSERT INTO products (product_id, display_name, description, family_id, currency_code, amount_minor,
                      state, revision, create_time, update_time)
SELECT 'prd_' || lpad(to_hex(i), 32, '0'), 'Product ' || i,
       'A product of the benchmark catalog, number ' || i || ', with a description of an ordinary length.',
       'fam_' || lpad(to_hex(1 + i % 10), 32, '0'), 'EUR', 100 + (i * 37) % 100000, 'ACTIVE', 1,
       {base} + i, {base} + i
FROM generate_series(1, {count}) AS i;
ANALYZE;
"""


def fill_catalog_sqlite(path: Path, count: int) -> None:
    base = int(time.time() * 1e6) - 10_000_000_000
    db = sqlite3.connect(path)
    try:
        db.execute(FAMILY_SQL_SQLITE.format(base=base))
        db.execute(PRODUCT_SQL_SQLITE.format(count=count, base=base))
        db.commit()
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (n,) = db.execute("SELECT count(*) FROM products").fetchone()
        if n != count:
            raise RuntimeError(f"{path}: {n} products instead of {count}")
    finally:
        db.close()


def fill_offers_sqlite(path: Path, now: int) -> None:
    """10,000 offers on the first 1,000 products: a quarter ended, a quarter not begun, one in ten
    withdrawn, one in three personal (seven customers), the rest for everyone."""
    hour = 3_600_000_000
    db = sqlite3.connect(path)
    try:
        db.execute(f"""
            WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {OFFERS})
            INSERT INTO offers (offer_id, product_id, customer_id, kind, discount_percent, start_time, end_time,
                                state, revision, create_time, update_time)
            SELECT printf('off_%032x', i), printf('prd_%032x', 1 + i % 1000),
                   CASE WHEN i % 3 = 0 THEN printf('cus_%032x', 1 + (i / 1000) % 7) ELSE '' END,
                   CASE WHEN i % 2 = 0 THEN 'LAST_DAY' ELSE 'SPEED' END, 5 + i % 50,
                   CASE i % 4 WHEN 0 THEN {now} - 48 * {hour} WHEN 1 THEN {now} + 24 * {hour} ELSE {now} - {hour} END,
                   CASE i % 4 WHEN 0 THEN {now} - 30 * {hour} WHEN 1 THEN {now} + 40 * {hour}
                              ELSE {now} + (1 + i % 20) * {hour} END,
                   CASE WHEN i % 10 = 9 THEN 'WITHDRAWN' ELSE 'ACTIVE' END, 1, {now} - {hour} + i, {now} - {hour} + i
            FROM n""")
        db.commit()
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()


def offers_postgres(procs: Procs, pg_url: str, created: list) -> tuple[str, str]:
    """A new PostgreSQL database beside the catalog's, with the offers of fill_offers_sqlite:
    (database, url)."""
    base, _, query = pg_url.partition("?")
    db = base.rsplit("/", 1)[1] + "_offers"
    created.append(db)
    psql(POSTGRES_URL, f"CREATE DATABASE {db}")
    url = base.rsplit("/", 1)[0] + "/" + db + (f"?{query}" if query else "")
    s = start_service(procs, "offers-migrate", "offers", url, AGORA_LOG="error",
                      AGORA_CATALOG_ADDRS="http://127.0.0.1:9", AGORA_CUSTOMERS_ADDRS="http://127.0.0.1:9")
    try:
        s.wait_serving()
    finally:
        s.stop()
    now, hour = int(time.time() * 1e6), 3_600_000_000
    hex32 = "lpad(to_hex({}), 32, '0')"
    psql(url, f"""
        INSERT INTO offers (offer_id, product_id, customer_id, kind, discount_percent, start_time, end_time,
                            state, revision, create_time, update_time)
        SELECT 'off_' || {hex32.format('i')}, 'prd_' || {hex32.format('1 + i % 1000')},
               CASE WHEN i % 3 = 0 THEN 'cus_' || {hex32.format('1 + (i / 1000) % 7')} ELSE '' END,
               CASE WHEN i % 2 = 0 THEN 'LAST_DAY' ELSE 'SPEED' END, 5 + i % 50,
               CASE i % 4 WHEN 0 THEN {now} - 48 * {hour} WHEN 1 THEN {now} + 24 * {hour} ELSE {now} - {hour} END,
               CASE i % 4 WHEN 0 THEN {now} - 30 * {hour} WHEN 1 THEN {now} + 40 * {hour}
                          ELSE {now} + (1 + i % 20) * {hour} END,
               CASE WHEN i % 10 = 9 THEN 'WITHDRAWN' ELSE 'ACTIVE' END, 1, {now} - {hour} + i, {now} - {hour} + i
        FROM generate_series(1, {OFFERS}) AS i""")
    psql(url, "ANALYZE offers")
    return db, url


def expected_available(path: Path, customer: str, product: str, now: int) -> int:
    db = sqlite3.connect(path)
    try:
        (n,) = db.execute(
            "SELECT count(*) FROM offers WHERE state = 'ACTIVE' AND customer_id IN ('', ?) AND start_time <= ? "
            "AND end_time > ? AND product_id = ?", (customer, now, now, product)).fetchone()
        return n
    finally:
        db.close()


def psql(url: str, sql: str, bound: float = 600) -> str:
    out = subprocess.run(["psql", url, "-v", "ON_ERROR_STOP=1", "-q", "-At", "-c", sql], capture_output=True,
                         text=True, timeout=bound)
    if out.returncode != 0:
        raise RuntimeError(f"psql: {out.stderr.strip()}")
    return out.stdout.strip()


def postgres_backends_cpu(dbname: str) -> float:
    """CPU seconds of the PostgreSQL backends serving `dbname` (their titles name it)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                title = f.read().replace(b"\0", b" ").decode(errors="replace")
            if title.startswith("postgres:") and f" {dbname} " in title:
                total += cpu_seconds(int(entry))
        except OSError:
            continue
    return total
