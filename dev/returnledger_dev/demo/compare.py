"""Do two runs of one scenario send the same digests and mail? ``make demo`` (``dag.test()``, local folders)
against ``make cluster-demo`` (scheduler, Celery workers on their own folders, the store on S3).

    python -m returnledger_dev.demo.compare OUT_DEMO OUT_CLUSTER

Compared: every digest file (``OUT/digests/*.html`` byte for byte, the JSON indexes without the ``path``
each entry names, which says where the run's store was), and every mail (``OUT/mail/*.eml``) by what it is
(the sink's label without its arrival number: mapped sends arrive in any order): recipients, subject,
digest header and HTML body. Where a store path appears in a body (the month-end notice's totals name the
report's files) it is compared as ``<store>/<file name>``. Exception ids (the id column of a digest's
lists: the order in which exceptions were raised, which concurrent polling may change between two runs)
are compared apart: a digest or mail that differs only in them is counted, not reported as different; its
type and subject, in the cells beside the id, must still match. Exit status 1 when anything else differs.
"""

from __future__ import annotations

import email
import json
import re
import sys
from email.header import decode_header, make_header
from pathlib import Path

_STORE_PATH = re.compile(r"(?:file|s3)://[^\s&\"'<>]*?/([^/\s&\"'<>]+\.(?:csv|html|json))")
#: an exception's id cell: a number right before its type (AMAZON_REJECTED, ...) in a digest's list
_EXCEPTION_ID = re.compile(r'<td class="n">\d+</td>(\s*<td>[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+</td>)')


def _normalise(text: str) -> str:
    return _STORE_PATH.sub(r"<store>/\1", text)


def without_exception_ids(text: str) -> str:
    return _EXCEPTION_ID.sub(r'<td class="n">#</td>\1', text)


def digest_files(out: Path) -> dict[str, str]:
    """The digests of a run by file name; JSON indexes without their ``path`` fields."""
    got = {}
    for p in sorted((out / "digests").glob("*")) if (out / "digests").is_dir() else []:
        if p.suffix == ".html":
            got[p.name] = p.read_text(encoding="utf-8")
        elif p.suffix == ".json":
            entries = json.loads(p.read_text(encoding="utf-8"))
            got[p.name] = json.dumps([{k: v for k, v in e.items() if k != "path"} for e in entries], indent=1)
    return got


def _html(msg) -> str:
    for part in msg.walk():
        if part.get_content_type() == "text/html":
            return part.get_payload(decode=True).decode(part.get_content_charset() or "utf-8")
    return ""


def mails(out: Path) -> dict[str, list[dict]]:
    """The mail of a run by label (``NNNN-<label>.eml`` without NNNN), each as the parts compared."""
    got: dict[str, list[dict]] = {}
    for p in sorted((out / "mail").glob("*.eml")) if (out / "mail").is_dir() else []:
        msg = email.message_from_bytes(p.read_bytes())
        label = p.stem.split("-", 1)[1] if "-" in p.stem else p.stem
        got.setdefault(label, []).append(
            {
                "to": str(msg.get("To", "")),
                "subject": str(make_header(decode_header(msg.get("Subject", "")))),
                "digest": str(msg.get("X-Returnledger-Digest", "")),
                "html": _normalise(_html(msg)).strip(),
            }
        )
    for items in got.values():
        items.sort(key=lambda m: json.dumps(m, sort_keys=True))
    return got


def _ids_free(value):
    """A digest's text, or a label's mails, without exception ids."""
    if isinstance(value, str):
        return without_exception_ids(value)
    return [{k: _ids_free(v) if isinstance(v, str) else v for k, v in m.items()} for m in value]


def _diff_maps(what: str, a: dict, b: dict, ids_only: list[str]) -> list[str]:
    out = [f"{what} {k}: only in the first run" for k in sorted(a.keys() - b.keys())]
    out += [f"{what} {k}: only in the second run" for k in sorted(b.keys() - a.keys())]
    for k in sorted(a.keys() & b.keys()):
        if a[k] == b[k]:
            continue
        same = _ids_free(a[k]) == _ids_free(b[k])
        (ids_only.append(f"{what} {k}") if same else out.append(f"{what} {k}: differs"))
    return out


def compare(first: Path, second: Path) -> tuple[dict, list[str]]:
    """(counts, differences) of the digests and mail of two runs' OUT folders; ``counts["ids_only"]``
    names what differs only in exception ids."""
    da, db_ = digest_files(first), digest_files(second)
    ma, mb = mails(first), mails(second)
    ids_only: list[str] = []
    diffs = _diff_maps("digest", da, db_, ids_only) + _diff_maps("mail", ma, mb, ids_only)
    counts = {
        "digest_files": [len(da), len(db_)],
        "mails": [sum(map(len, ma.values())), sum(map(len, mb.values()))],
        "ids_only": ids_only,
    }
    return counts, diffs


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    counts, diffs = compare(Path(args[0]), Path(args[1]))
    print(
        f"digest files {counts['digest_files'][0]} / {counts['digest_files'][1]}, "
        f"mails {counts['mails'][0]} / {counts['mails'][1]}; "
        f"{len(counts['ids_only'])} differ only in exception ids (the order they were raised in)"
    )
    for d in diffs:
        print("  " + d)
    print("same digests and mail" if not diffs else f"{len(diffs)} difference(s)")
    return 1 if diffs else 0


if __name__ == "__main__":
    raise SystemExit(main())
