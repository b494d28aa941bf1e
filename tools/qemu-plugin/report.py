#!/usr/bin/env python3
"""Turns edgecap_profile.so runs (one JSON per CPU model and bundle) into per-stage tables,
hot-function lists and time ESTIMATES for the boards. Used by scripts/arm-profile.sh.

    report.py --run CPU BUNDLE BINARY RUN.json [--run ...] [--md OUT.md] [--json OUT.json]

Each run is one `edgecap caption --threads 1 --max-tokens N --json IMG IMG` process under
qemu-user with the plugin: the bundle load, then the same image captioned twice. Stages come from
the engine's markers (engine/src/stage.rs). "per caption" is the second caption (warm: the
first one also pays first-run allocations); "load + 1st caption" is the process from its start to
the end of the first caption, as a one-image run would count it.

Every count is an emulated instruction count (deterministic, not time). Times are ESTIMATES FROM
SIMULATION: per marker interval, max(instructions / (IPC x clock), DRAM bytes / bandwidth), summed;
DRAM bytes = (simulated last-level-cache misses + dirty write-backs) x line size. The board
model (clock, bandwidth, assumed IPC) is in BOARDS below and printed with every table.
"""

from __future__ import annotations

import argparse
import bisect
import json
import re
import subprocess
import sys
from pathlib import Path

# The board each emulated CPU model stands for, and the stated time model. IPC is an assumption
# (qemu counts instructions, it does not time them): ~2 for an out-of-order A76 in NEON matrix
# kernels and ~1.5 for the narrower A72; armv7 code on a Pi 4 runs on the same A72 cores.
BOARDS = {
    "cortex-a76": {"board": "Pi 5 (4x Cortex-A76 2.4 GHz)", "ghz": 2.4, "ipc": 2.0, "gbps": 5.5,
                   "llc_kib": 2048, "llc": "2 MiB L3"},
    "cortex-a72": {"board": "Pi 4 (4x Cortex-A72 1.8 GHz)", "ghz": 1.8, "ipc": 1.5, "gbps": 2.8,
                   "llc_kib": 1024, "llc": "1 MiB L2"},
    "cortex-a7": {"board": "Pi 4, 32-bit OS (armv7 code on the A72 at 1.8 GHz)", "ghz": 1.8, "ipc": 1.5,
                  "gbps": 2.8, "llc_kib": 1024, "llc": "1 MiB L2"},
}
CPU_LABEL = {
    "cortex-a76": "cortex-a76 (aarch64; Pi 5, SDOT)",
    "cortex-a72": "cortex-a72 (aarch64; Pi 4, no SDOT)",
    "cortex-a7": "cortex-a7 (armv7 build, NEON)",
}
LOAD_STAGES = ("load", "load_decoder", "load_mapper", "load_rest")
CAPTION_STAGES = ("preprocess", "encoder", "mapper", "first_token", "next_token", "detokenize")


class Run:
    def __init__(self, cpu: str, bundle: str, binary: Path, path: Path):
        self.cpu, self.bundle, self.binary, self.path = cpu, bundle, binary, path
        self.data = json.loads(path.read_text())
        self.line = self.data["config"]["llc_line"]
        self.has_cache = self.data["config"]["llc_kib"] > 0
        self.intervals = self._intervals()

    def _intervals(self) -> list[dict]:
        """(stage, counters) per marker interval, in order; the last one ends at process exit."""
        marks = [{"stage": "startup", **{k: 0 for k in self.data["totals"] if k != "translated_blocks"}}]
        marks += self.data["markers"]
        end = dict(self.data["totals"], stage="exit")
        out = []
        for a, b in zip(marks, marks[1:] + [end]):
            out.append({"stage": a["stage"], **{k: b[k] - a[k] for k in a if k != "stage"}})
        return out

    def dram_bytes(self, iv: dict) -> int:
        return (iv["llc_misses"] + iv["llc_writebacks"]) * self.line

    def seconds(self, iv: dict) -> float:
        b = BOARDS[self.cpu]
        compute = iv["insns"] / (b["ipc"] * b["ghz"] * 1e9)
        memory = self.dram_bytes(iv) / (b["gbps"] * 1e9) if self.has_cache else 0.0
        return max(compute, memory)

    def captions(self) -> list[list[dict]]:
        """The intervals of each caption, preprocess to caption_end."""
        out, cur = [], None
        for iv in self.intervals:
            if iv["stage"] == "preprocess":
                cur = []
            if cur is not None:
                if iv["stage"] == "caption_end":
                    out.append(cur)
                    cur = None
                else:
                    cur.append(iv)
        return out

    def summary(self) -> dict:
        caps = self.captions()
        if not caps:
            raise SystemExit(f"{self.path}: no complete caption")

        def agg(ivs):
            return {"insns": sum(i["insns"] for i in ivs),
                    "accessed_bytes": sum(i["load_bytes"] + i["store_bytes"] for i in ivs),
                    "load_bytes": sum(i["load_bytes"] for i in ivs),
                    "dram_bytes": sum(self.dram_bytes(i) for i in ivs),
                    "est_ms": 1e3 * sum(self.seconds(i) for i in ivs),
                    "compute_ms": 1e3 * sum(i["insns"] for i in ivs) / (BOARDS[self.cpu]["ipc"] * BOARDS[self.cpu]["ghz"] * 1e9),
                    "memory_ms": 1e3 * sum(self.dram_bytes(i) for i in ivs) / (BOARDS[self.cpu]["gbps"] * 1e9)}

        # The last caption: the second, warm one of a two-image run.
        cap = caps[-1]
        nexts = [i for i in cap if i["stage"] == "next_token"]
        # The last next_token interval is the end of decoding (no token fed): folded into "rest".
        steps, tail = nexts[:-1], nexts[-1:]
        stages = {
            "load": agg([i for i in self.intervals if i["stage"] in LOAD_STAGES]),
            "preprocess": agg([i for i in cap if i["stage"] == "preprocess"]),
            "encoder": agg([i for i in cap if i["stage"] == "encoder"]),
            "mapper": agg([i for i in cap if i["stage"] == "mapper"]),
            "first_token": agg([i for i in cap if i["stage"] == "first_token"]),
            "next_tokens": agg(steps),
            "rest": agg(tail + [i for i in cap if i["stage"] == "detokenize"]),
            "caption": agg(cap),
            "first_caption": agg(caps[0]),
        }
        per_next = {k: (v / len(steps) if steps else 0) for k, v in stages["next_tokens"].items()}
        # The process from its start to the end of the first caption (a one-image run).
        end1 = 0
        seen = 0
        for n, iv in enumerate(self.intervals):
            if iv["stage"] == "caption_end":
                seen += 1
                if seen == 1:
                    end1 = n
                    break
        load_first = agg(self.intervals[:end1])
        image_decode = agg([i for i in self.intervals if i["stage"] == "image_decode"][-1:])
        return {"cpu": self.cpu, "bundle": self.bundle, "tokens": len(steps) + 1, "captions": len(caps),
                "stages": stages,
                "per_next_token": per_next, "load_plus_first_caption": load_first,
                "image_decode": image_decode, "process": agg(self.intervals),
                "llc": self.data["config"], "board": BOARDS[self.cpu]}


# ---- symbols ----
def demangle(names: list[str]) -> list[str]:
    if not names:
        return []
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
        dem = out.split("\n")[:len(names)]
    except (OSError, subprocess.CalledProcessError):
        dem = names
    return [re.sub(r"::h[0-9a-f]{16}$", "", d) for d in dem]


def short(name: str, width: int = 110) -> str:
    return name if len(name) <= width else name[:width - 1] + "…"


class LibSymbols:
    """Names addresses in the guest's shared libraries (blocks qemu found no symbol for) from the
    memory map the plugin wrote and each library's dynamic symbols."""

    def __init__(self, run: Run):
        d = run.data
        self.binary = run.binary.resolve()
        self.nm_file = run.path.with_suffix(".nm")
        self.run_time = run.path.stat().st_mtime
        self.stale = False
        self.maps = []
        for line in d.get("host_maps", []):
            parts = line.split()
            if len(parts) < 6:
                continue
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            self.maps.append((lo, hi, int(parts[2], 16), parts[5]))
        self.guest_base = self._guest_base(run)
        self.syms: dict[str, tuple[list[int], list[tuple[int, int, str]]]] = {}
        self.loads: dict[str, list[tuple[int, int]]] = {}

    def _guest_base(self, run: Run) -> int:
        """Host address minus guest address: the binary's first mapping (file offset 0) against
        the guest address qemu loaded it at (start_code)."""
        starts = [lo for lo, hi, off, path in self.maps if off == 0 and Path(path).resolve() == self.binary]
        return (min(starts) - run.data["start_code"]) if starts else 0

    def _lib(self, path: str):
        if path not in self.syms:
            # The executable's own symbol table (qemu names only sized functions: this finds the
            # assembly kernels' labels too); a library's dynamic symbols.
            flags = ["-S", "--defined-only"] + ([] if self._is_binary(path) else ["-D"])
            if self._is_binary(path) and self.nm_file.is_file():
                out = self.nm_file.read_text()  # the symbols of the binary as it was at the run
            elif self._is_binary(path) and Path(path).stat().st_mtime > self.run_time:
                out = ""  # rebuilt since the run: its symbols would name the wrong code
                self.stale = True
            else:
                out = subprocess.run(["nm", *flags, path], capture_output=True, text=True).stdout
            entries = []
            for line in out.splitlines():
                parts = line.split()
                if len(parts) == 4 and parts[2] in "TtWwi":
                    entries.append((int(parts[0], 16), int(parts[1], 16), parts[3].split("@")[0]))
                elif len(parts) == 3 and parts[1] in "TtWwi":
                    entries.append((int(parts[0], 16), 0, parts[2].split("@")[0]))
            # Mapping symbols ($x, $d) and assembly-local labels (.loop4) name no function.
            entries = sorted(e for e in entries if not e[2].startswith(("$", ".")))
            self.syms[path] = ([a for a, _, _ in entries], entries)
            phdrs = subprocess.run(["readelf", "-lW", path], capture_output=True, text=True).stdout
            segs = []
            for line in phdrs.splitlines():
                p = line.split()
                if p and p[0] == "LOAD":
                    segs.append((int(p[1], 16), int(p[2], 16)))  # (file offset, vaddr)
            self.loads[path] = segs
        return self.syms[path], self.loads[path]

    def _is_binary(self, path: str) -> bool:
        return Path(path).resolve() == self.binary

    def name(self, vaddr: int) -> str:
        host = vaddr + self.guest_base
        for lo, hi, off, path in self.maps:
            if lo <= host < hi:
                foff = host - lo + off
                (addrs, entries), segs = self._lib(path)
                seg = max((s for s in segs if s[0] <= foff), default=(0, 0))
                elf = foff - seg[0] + seg[1]
                i = bisect.bisect_right(addrs, elf) - 1
                lib = Path(path).name
                if i < 0:
                    return f"{lib}+{elf:#x} (rebuilt since the run)" if self.stale else f"{lib}:?"
                addr, size, sym = entries[i]
                # Past a sized symbol's end: code the library does not export (e.g. glibc's
                # memcpy/memset variants), grouped by the exported symbol before it.
                if sym == "_init":
                    return f"{lib}:(PLT stubs into shared libraries)"
                return f"{lib}:{sym}" if size == 0 or elf < addr + size else f"{lib}:?(code after {sym})"
        return "?"


def hot_functions(run: Run, stages: tuple[str, ...] | None, limit: int) -> list[dict]:
    """Symbols by instructions over the given stages (None: the whole process)."""
    d = run.data
    totals: dict[str, list[int]] = {}
    if stages is None:
        rows = d["symbols"]
    else:
        rows = [r for s in stages for r in d["stages"].get(s, {}).get("top", [])]
    for r in rows:
        t = totals.setdefault(r["symbol"], [0, 0])
        t[0] += r["insns"]
        t[1] += r["llc_misses"]
    # Blocks without a symbol ("@<address>": shared libraries, the dynamic loader) are named
    # from the guest's libraries.
    if any(n.startswith("@") for n in totals):
        libs = LibSymbols(run)
        for n in [n for n in totals if n.startswith("@")]:
            insns, misses = totals.pop(n)
            t = totals.setdefault(libs.name(int(n[1:], 16)), [0, 0])
            t[0] += insns
            t[1] += misses
    names = sorted(totals, key=lambda n: -totals[n][0])
    dem = demangle(names)
    total = sum(v[0] for v in totals.values()) or 1
    merged: dict[str, list[int]] = {}
    for n, dn in zip(names, dem):
        m = merged.setdefault(dn, [0, 0])
        m[0] += totals[n][0]
        m[1] += totals[n][1]
    ordered = sorted(merged.items(), key=lambda kv: -kv[1][0])[:limit]
    return [{"symbol": n, "insns": v[0], "share": v[0] / total, "dram_bytes": v[1] * run.line} for n, v in ordered]


# ---- formatting ----
def g(n: float) -> str:
    return f"{n / 1e9:.3f} G" if n >= 1e8 else f"{n / 1e6:.1f} M"


def mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def ms(x: float) -> str:
    return f"{x / 1e3:.2f} s" if x >= 1e3 else f"{x:.0f} ms" if x >= 10 else f"{x:.1f} ms"


def summary_table(summaries: list[dict], tokens: int) -> str:
    """One row per CPU model and bundle: the figures the issue tracks."""
    out = [f"| CPU model (board for the estimate) | bundle | per caption | load + first caption | load | "
           f"per next token | DRAM per next token | est. per caption | est. load + first caption |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for cpu in BOARDS:
        for s in (s for s in summaries if s["cpu"] == cpu):
            st, t = s["stages"], s["per_next_token"]
            dram = mb(t["dram_bytes"]) if s["llc"]["llc_kib"] else "-"
            note = "" if s["captions"] > 1 else " (1 caption: cold)"
            out.append(f"| {CPU_LABEL[cpu]} | {s['bundle']}{note} | {g(st['caption']['insns'])} | "
                       f"{g(s['load_plus_first_caption']['insns'])} | {g(st['load']['insns'])} | {g(t['insns'])} | {dram} | "
                       f"{ms(st['caption']['est_ms'])} | {ms(s['load_plus_first_caption']['est_ms'])} |")
    out.append("")
    out.append(f"Instructions: emulated counts (qemu-user 7.2), `--threads 1`, {tokens} tokens. \"est.\": estimate from "
               "simulation, max(instructions / (IPC x clock), DRAM bytes / bandwidth) per stage interval: "
               + "; ".join(f"{cpu}: {b['board']}, IPC {b['ipc']} assumed, {b['gbps']} GB/s, {b['llc']} simulated"
                           for cpu, b in BOARDS.items() if any(s["cpu"] == cpu for s in summaries)) + ".")
    out.append("")
    return "\n".join(out)


def tables(summaries: list[dict], hot: dict, tokens: int) -> str:
    out = [summary_table(summaries, tokens)]
    for cpu in BOARDS:
        rows = [s for s in summaries if s["cpu"] == cpu]
        if not rows:
            continue
        b = BOARDS[cpu]
        out.append(f"### {CPU_LABEL[cpu]}\n")
        out.append(f"Instructions counted under qemu-user 7.2 (`-cpu {cpu}`), `--threads 1`, {tokens} tokens. "
                   f"Estimate from simulation for a {b['board']}: IPC {b['ipc']} assumed, "
                   f"{b['gbps']} GB/s, simulated last-level cache {b['llc']} (16-way, 64-byte lines).\n")
        head = "| stage | " + " | ".join(f"{s['bundle']} instructions | {s['bundle']} DRAM bytes | {s['bundle']} est. time" for s in rows) + " |"
        out.append(head)
        out.append("|---|" + "---:|---:|---:|" * len(rows))
        labels = [("load (bundle stamped as verified)", lambda s: s["stages"]["load"]),
                  ("preprocess", lambda s: s["stages"]["preprocess"]),
                  ("image encoder", lambda s: s["stages"]["encoder"]),
                  ("mapper", lambda s: s["stages"]["mapper"]),
                  ("first token (prefix + choice)", lambda s: s["stages"]["first_token"]),
                  ("per next token", lambda s: s["per_next_token"]),
                  ("**per caption** (warm; cold in a one-caption run)", lambda s: s["stages"]["caption"]),
                  ("first caption (cold)", lambda s: s["stages"]["first_caption"]),
                  ("**load + first caption** (process start to first caption)", lambda s: s["load_plus_first_caption"]),
                  ("image decode (JPEG, not in the caption)", lambda s: s["image_decode"])]
        for label, f in labels:
            cells = []
            for s in rows:
                v = f(s)
                dram = mb(v["dram_bytes"]) if s["llc"]["llc_kib"] else "-"
                cells.append(f"{g(v['insns'])} | {dram} | {ms(v['est_ms'])}")
            out.append(f"| {label} | " + " | ".join(cells) + " |")
        out.append("")
        for s in rows:
            t = s["per_next_token"]
            if s["llc"]["llc_kib"]:
                out.append(f"- {s['bundle']}: per next token {mb(t['accessed_bytes'])} loaded+stored by instructions, "
                           f"{mb(t['dram_bytes'])} from/to DRAM (simulated); per caption the estimate is bound by "
                           f"{'memory' if s['stages']['caption']['memory_ms'] > s['stages']['caption']['compute_ms'] else 'instructions'} "
                           f"(compute {ms(s['stages']['caption']['compute_ms'])}, DRAM {ms(s['stages']['caption']['memory_ms'])}).")
        out.append("")
    for key, items in hot.items():
        out.append(f"#### Hot functions: {key}\n")
        out.append("| share | instructions | DRAM bytes (sim.) | function |")
        out.append("|---:|---:|---:|---|")
        for h in items:
            out.append(f"| {100 * h['share']:.1f} % | {g(h['insns'])} | {mb(h['dram_bytes'])} | `{short(h['symbol'])}` |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", nargs=4, action="append", metavar=("CPU", "BUNDLE", "BINARY", "JSON"), required=True)
    p.add_argument("--md", type=Path)
    p.add_argument("--json", type=Path)
    p.add_argument("--hot", type=int, default=15, help="hot functions listed per run")
    p.add_argument("--preamble", default="", help="text put before the tables in --md")
    args = p.parse_args()
    runs = [Run(cpu, bundle, Path(binary), Path(path)) for cpu, bundle, binary, path in args.run]
    summaries = [r.summary() for r in runs]
    tokens = summaries[0]["tokens"]
    hot, hot_json = {}, {}
    for r in runs:
        cap = hot_functions(r, CAPTION_STAGES, args.hot)
        load = hot_functions(r, LOAD_STAGES, args.hot)
        whole = hot_functions(r, None, args.hot)
        hot[f"{r.bundle} caption on {r.cpu} (both captions' stages; share of their instructions)"] = cap
        hot[f"{r.bundle} load on {r.cpu}"] = load
        hot_json[f"{r.cpu}/{r.bundle}"] = {"caption": cap, "load": load, "process": whole}
    text = tables(summaries, hot, tokens)
    print(text)
    if args.md:
        args.md.write_text(args.preamble + text + "\n")
    if args.json:
        args.json.write_text(json.dumps({"runs": summaries, "hot_functions": hot_json, "boards": BOARDS,
                                         "note": "emulated instruction counts; times are estimates from simulation"},
                                        indent=1) + "\n")


if __name__ == "__main__":
    main()
