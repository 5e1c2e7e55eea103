"""The one line each bench prints per target: ``TARGET <name>: <measured> vs <target> -> met|missed``."""


def report(name: str, measured: str, target: str, met: bool) -> str:
    line = f"TARGET {name}: {measured} vs {target} -> {'met' if met else 'missed'}"
    print(line, flush=True)
    return line
