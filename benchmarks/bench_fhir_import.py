"""FHIR Bulk Data import at the size of a real export: 1,000,000 Appointments plus their Patients.

The export is written first (not timed) to a temporary folder: Patient and Appointment NDJSON shaped like
the FHIR R4 specification's examples (participants, specialty, appointmentType, created, start, end), in
four Appointment files, one of them gzipped, as a Bulk Data export splits them. Then
``carecast data import-fhir`` runs in a child process, timed from start to exit; its peak memory is the
child's maximum resident set. The target (issue 15): at most 60 s and 4 GB on 2 cores.

    python benchmarks/bench_fhir_import.py [--appointments 1000000] [--patients 200000]
"""

from __future__ import annotations

import argparse
import gzip
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from carecast.bench import report  # noqa: E402

STATUSES = np.array(["fulfilled", "noshow", "cancelled", "booked"])
SPECIALTIES = np.array(["394814009|General practice", "394579002|Cardiology", "394582007|Dermatology",
                        "394537008|Pediatrics", "394801008|Trauma and orthopedics"])
TYPES = np.array(["FOLLOWUP", "CHECKUP", "ROUTINE", "EMERGENCY"])

PATIENT = ('{{"resourceType":"Patient","id":"p{i}","meta":{{"lastUpdated":"2024-01-01T00:00:00Z"}},'
           '"identifier":[{{"use":"usual","system":"urn:oid:1.2.36.146.595.217.0.1","value":"{i}"}}],"active":true,'
           '"name":[{{"use":"official","family":"Family{i}","given":["Given"]}}],'
           '"telecom":[{{"system":"phone","value":"(03) 5555 {i4}","use":"mobile","rank":1}}],'
           '"gender":"{g}","birthDate":"{y}-06-15","address":[{{"use":"home","line":["{i} Main St"],'
           '"city":"Springfield","postalCode":"{z}"}}],'
           '"communication":[{{"language":{{"coding":[{{"system":"urn:ietf:bcp:47","code":"{lang}"}}]}},"preferred":true}}]}}\n')
APPOINTMENT = ('{{"resourceType":"Appointment","id":"a{i}","meta":{{"lastUpdated":"{upd}"}},"status":"{st}",'
               '"serviceCategory":[{{"coding":[{{"system":"http://example.org/service-category","code":"gp",'
               '"display":"General Practice"}}]}}],"specialty":[{{"coding":[{{"system":"http://snomed.info/sct",'
               '"code":"{sc}","display":"{sd}"}}]}}],"appointmentType":{{"coding":[{{"system":'
               '"http://terminology.hl7.org/CodeSystem/v2-0276","code":"{t}"}}]}},"priority":5,'
               '"description":"Discussion on the results of your recent tests","start":"{start}","end":"{end}",'
               '"created":"{created}","participant":[{{"actor":{{"reference":"Patient/p{p}","display":"A Patient"}},'
               '"required":"required","status":"accepted"}},{{"actor":{{"reference":"Practitioner/dr{dr}",'
               '"display":"Dr A"}},"required":"required","status":"accepted"}},{{"actor":{{"reference":"Location/1",'
               '"display":"South Wing, second floor"}},"required":"required","status":"accepted"}}]}}\n')


def _iso(ns: np.ndarray) -> np.ndarray:
    return np.datetime_as_string(ns.astype("datetime64[s]"), unit="s", timezone="UTC")


def write_export(folder: Path, appointments: int, patients: int, seed: int = 7) -> int:
    """Write the export; returns its size in bytes."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    genders = rng.choice(["male", "female", "other", "unknown"], patients, p=[0.48, 0.5, 0.01, 0.01])
    years = rng.integers(1930, 2020, patients)
    langs = rng.choice(["en", "es", "pt", "vi", "de"], patients)
    with (folder / "Patient.ndjson").open("w") as fh:
        for i in range(patients):
            fh.write(PATIENT.format(i=i, i4=f"{i % 10000:04d}", g=genders[i], y=years[i], z=f"{i % 99999:05d}",
                                    lang=langs[i]))
    day = np.datetime64("2023-01-01T08:00:00", "s").astype("int64")
    created = day + rng.integers(0, 700 * 86400, appointments)
    start = created + rng.integers(3600, 60 * 86400, appointments)
    end = start + 1800
    upd = start + 86400
    created_s, start_s, end_s, upd_s = _iso(created), _iso(start), _iso(end), _iso(upd)
    st = rng.choice(STATUSES, appointments, p=[0.7, 0.12, 0.1, 0.08])
    spec = rng.choice(SPECIALTIES, appointments)
    types = rng.choice(TYPES, appointments)
    pat = rng.integers(0, patients, appointments)
    dr = rng.integers(0, 300, appointments)
    parts = np.array_split(np.arange(appointments), 4)
    for k, idx in enumerate(parts):
        name = f"Appointment-{k + 1}.ndjson" + (".gz" if k == 3 else "")
        fh = gzip.open(folder / name, "wt", compresslevel=1) if k == 3 else (folder / name).open("w")
        with fh:
            for i in idx:
                sc, sd = spec[i].split("|")
                fh.write(APPOINTMENT.format(i=i, upd=upd_s[i], st=st[i], sc=sc, sd=sd, t=types[i], start=start_s[i],
                                            end=end_s[i], created=created_s[i], p=pat[i], dr=dr[i]))
    return sum(p.stat().st_size for p in folder.iterdir())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--appointments", type=int, default=1_000_000)
    ap.add_argument("--patients", type=int, default=200_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-fhir-") as tmp:
        tmp_path = Path(tmp)
        t0 = time.perf_counter()
        size = write_export(tmp_path / "export", args.appointments, args.patients)
        write_s = time.perf_counter() - t0
        env = {**os.environ, "CARECAST_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, "-c", "from pipelines.cli import app; app(prog_name='carecast')", "data", "import-fhir",
               str(tmp_path / "export"), "--out", str(tmp_path / "feeds")]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
        import_s = time.perf_counter() - t0
        if done.returncode != 0:
            sys.exit(f"import-fhir failed ({done.returncode}):\n{done.stderr[-3000:]}")
        child = resource.getrusage(resource.RUSAGE_CHILDREN)
        peak_mb = child.ru_maxrss / 1024
        cpu_s = child.ru_utime + child.ru_stime
        print(done.stdout)
    figures = {"appointments": args.appointments, "patients": args.patients, "export_mb": round(size / 1e6, 1),
               "import_s": round(import_s, 1), "import_cpu_s": round(cpu_s, 1), "load_avg_1m": round(os.getloadavg()[0], 1),
               "peak_rss_mb": round(peak_mb), "write_export_s": round(write_s, 1),
               "appointments_per_s": round(args.appointments / import_s)}
    report("fhir_import", figures,
           f"FHIR Bulk Data import: {args.appointments:,} Appointments + {args.patients:,} Patients "
           f"({figures['export_mb']:,} MB NDJSON) in {import_s:.1f} s ({cpu_s:.1f} s of CPU; load average "
           f"{figures['load_avg_1m']} on {os.cpu_count()} cores), peak {peak_mb:,.0f} MB (target: 60 s, 4,096 MB on 2 cores)",
           timed="carecast data import-fhir in a child process, start to exit: reading, mapping, validation, writing",
           not_timed="writing the export")


if __name__ == "__main__":
    main()
