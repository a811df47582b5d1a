"""Jars from Maven Central, checked against the SHA-1 sums committed in stack/jars.sha1.

Maven itself fetches with strict checksums (`-C`: a jar whose published `.sha1` does
not match is an error, not a warning). Before a broker starts, every cached jar is
checked again against the sums in the repository, so a jar changed in the cache, or a
different one published under the same coordinates, is refused. After a deliberate
version change, `python -m stack checksums` writes the sums from the `.sha1` files Maven
Central published next to the jars (kept in ~/.m2 by the fetch); review the diff.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from stack.config import ROOT
from stack.procs import StackError

SUMS = ROOT / "stack" / "jars.sha1"


def sha1(path: Path) -> str:
    digest = hashlib.sha1()  # noqa: S324 - Maven Central publishes SHA-1, we compare it
    with open(path, "rb") as jar:
        for block in iter(lambda: jar.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def expected(sums: Path = SUMS) -> dict[str, str]:
    """Jar file name -> SHA-1, from lines `<sha1>  <file name>` (# starts a comment)."""
    table: dict[str, str] = {}
    for line in sums.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            digest, name = line.split()
            table[name] = digest.lower()
    return table


def verify(jars: list[Path], sums: Path = SUMS) -> None:
    """Every jar must be listed with its exact SHA-1; the error names each one that is not."""
    table = expected(sums)
    problems = []
    for jar in sorted(jars):
        want = table.get(jar.name)
        if want is None:
            problems.append(f"{jar.name}: no checksum in {sums}")
        elif sha1(jar) != want:
            problems.append(f"{jar.name}: SHA-1 {sha1(jar)} differs from the committed {want}")
    if problems:
        raise StackError("refusing unverified jars in " + str(jars[0].parent) + ":\n  "
                         + "\n  ".join(problems)
                         + "\n  (after a deliberate version change: python -m stack "
                         "checksums, then review and commit stack/jars.sha1)")


def copy(coordinates: str, target: Path) -> Path:
    """Fetch one artifact (group:artifact:version) with strict checksums into target."""
    group, artifact, version = coordinates.split(":")
    jar = target / f"{artifact}-{version}.jar"
    if jar.exists():
        return jar
    target.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mvn", "-q", "-B", "-C", "dependency:copy", f"-Dartifact={coordinates}",
         f"-DoutputDirectory={target}"], capture_output=True, text=True)
    if result.returncode != 0 or not jar.exists():
        raise StackError(f"Maven could not fetch {coordinates}:\n{result.stdout}{result.stderr}")
    return jar


def published_sha1(jar_name: str, repository: Path | None = None) -> str:
    """The `.sha1` Maven Central published for a jar, as the fetch stored it in ~/.m2."""
    repository = repository or Path.home() / ".m2" / "repository"
    found = sorted(repository.rglob(jar_name + ".sha1"))
    if not found:
        raise StackError(f"no published .sha1 for {jar_name} under {repository}")
    return found[0].read_text().split()[0].strip().lower()


def write_sums(jars: list[Path], sums: Path = SUMS) -> None:
    """Record the published SHA-1 of each jar (after checking the jar against it)."""
    lines = ["# SHA-1 of every jar the stack runs, as published on Maven Central next to",
             "# each artifact. Checked before every broker start (stack/maven.py)."]
    for jar in sorted(jars, key=lambda p: p.name):
        published = published_sha1(jar.name)
        if sha1(jar) != published:
            raise StackError(f"{jar}: SHA-1 {sha1(jar)} differs from the published {published}")
        lines.append(f"{published}  {jar.name}")
    sums.write_text("\n".join(lines) + "\n")
