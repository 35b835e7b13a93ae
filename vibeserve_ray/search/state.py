"""The search's state in git: every candidate a commit, every evaluation a git note.

`RUN/repo` holds one commit per candidate whose tree is exactly the candidate
directory and whose parent is the candidate it came from; `island-<i>` branches point
at each island's latest candidate; notes under `refs/notes/evaluations` carry each
evaluation's verdict, metrics, knobs and hints. Every evaluated commit also has a tag,
`candidates/<eval_id>`: a rejected candidate, or a validated one its island moved on
from, is on no branch, and a note does not keep the commit it annotates, so without the
tag `git gc` or a clone would drop a commit results.parquet names (tags, unlike other
refs, travel with a clone). The outer loop's planning state
(MEMORY.md, BACKLOG.md) lives on its own `planning` branch and the agents' transcripts on
`transcripts` (keyed by the candidate commit), so candidate trees stay exactly the
candidates. Trees are written with a throwaway index, never a checkout,
so the driver is the only writer and nothing depends on a working tree.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
from pathlib import Path

import git

NOTES_REF = "evaluations"
PLANNING_BRANCH = "planning"
CANDIDATE_TAGS = "refs/tags/candidates/"  # + eval_id: the commit that evaluation recorded
TRANSCRIPTS_BRANCH = "transcripts"  # agent sessions: <candidate commit>/<role>.json, rounds/<n>/orchestrator.json
AUTHOR_ENV = {
    "GIT_AUTHOR_NAME": "vibeserve",
    "GIT_AUTHOR_EMAIL": "vibeserve@localhost",
    "GIT_COMMITTER_NAME": "vibeserve",
    "GIT_COMMITTER_EMAIL": "vibeserve@localhost",
}


class RunRepo:
    def __init__(self, path: Path):
        self.path = Path(path)
        if (self.path / ".git").is_dir() or (self.path / "HEAD").is_file():
            self.repo = git.Repo(self.path)
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            self.repo = git.Repo.init(self.path)
            self.repo.git.config("gc.auto", "0")  # a search writes many small objects; gc mid-run only costs time

    def _git(self, *args: str, index: str | None = None, work_tree: str | None = None, input: str | None = None) -> str:
        env = dict(AUTHOR_ENV)
        if index:
            env["GIT_INDEX_FILE"] = index
        # git runs inside the repository: a relative work tree means the caller's directory, so resolve it here
        cmd = ["git"] + (["--work-tree", str(Path(work_tree).resolve())] if work_tree else []) + list(args)
        return self.repo.git.execute(cmd, env=env, istream=None if input is None else _stdin(input), strip_newline_in_stdout=True)

    # --- candidates ------------------------------------------------------------------

    def tree_of_dir(self, directory: Path) -> str:
        """The git tree id of `directory` as a candidate (ignoring caches)."""
        with tempfile.TemporaryDirectory() as tmp:
            index = os.path.join(tmp, "index")
            self._git("add", "-A", "--", ".", ":(exclude)**/__pycache__", index=index, work_tree=str(directory))
            return self._git("write-tree", index=index)

    def commit_candidate(self, directory: Path, parent: str | None, message: str, branch: str | None = None) -> str:
        """Commits `directory` as a candidate whose parent is `parent`; moves `branch` to it."""
        tree = self.tree_of_dir(directory)
        args = ["commit-tree", tree, "-m", message] + (["-p", parent] if parent else [])
        commit = self._git(*args)
        if branch:
            self._git("update-ref", f"refs/heads/{branch}", commit)
        return commit

    def tag_candidates(self, commits: dict[str, str]) -> None:
        """Tags each evaluation's commit (eval_id -> commit) as `candidates/<eval_id>`, in one
        transaction; a commit git no longer has is skipped (nothing brings it back)."""
        listing = self._git("cat-file", "--batch-check=%(objectname) %(objecttype)", input="".join(f"{c}\n" for c in commits.values()))
        present = {line.split()[0] for line in listing.splitlines() if line.endswith(" commit")}
        todo = "".join(f"update {CANDIDATE_TAGS}{e} {c}\n" for e, c in commits.items() if c in present)
        if todo:
            self._git("update-ref", "--stdin", input=todo)

    def candidate_tags(self) -> dict[str, str]:
        """eval_id -> the commit its tag names, for every tagged evaluation."""
        listing = self._git("for-each-ref", "--format=%(refname) %(objectname)", CANDIDATE_TAGS)
        return {ref[len(CANDIDATE_TAGS):]: commit for ref, commit in (line.split() for line in listing.splitlines())}

    def tree_id(self, commit: str) -> str:
        return self._git("rev-parse", f"{commit}^{{tree}}")

    def parent(self, commit: str) -> str | None:
        parents = self._git("rev-list", "--parents", "-n", "1", commit).split()[1:]
        return parents[0] if parents else None

    def lineage(self, commit: str) -> list[str]:
        """`commit` and its ancestors back to the seed, newest first."""
        return self._git("rev-list", "--first-parent", commit).split()

    def export(self, commit: str, dest: Path) -> Path:
        """Writes the candidate tree of `commit` into `dest`."""
        dest.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        self.repo.archive(buf, treeish=commit, format="tar")
        buf.seek(0)
        with tarfile.open(fileobj=buf) as tar:
            tar.extractall(dest, filter="data")
        return dest

    def archive(self, commit: str) -> bytes:
        """The candidate tree of `commit` as tar bytes: how trees travel through Ray's object store."""
        buf = io.BytesIO()
        self.repo.archive(buf, treeish=commit, format="tar")
        return buf.getvalue()

    def diff(self, parent: str | None, commit: str) -> str:
        if parent is None:
            return ""
        return self._git("diff", parent, commit)

    def subject(self, commit: str) -> str:
        """The first line of `commit`'s message: the change it made."""
        return self._git("log", "-1", "--format=%s", commit)

    def diffstat(self, parent: str | None, commit: str) -> str:
        """`git diff --shortstat` from `parent` to `commit` ("" for the seed)."""
        return "" if parent is None else self._git("diff", "--shortstat", parent, commit).strip()

    def branch_head(self, branch: str) -> str | None:
        try:
            return self._git("rev-parse", "--verify", "-q", f"refs/heads/{branch}")
        except git.GitCommandError:
            return None

    def set_branch(self, branch: str, commit: str) -> None:
        self._git("update-ref", f"refs/heads/{branch}", commit)

    # --- evaluations as notes ----------------------------------------------------------

    def add_note(self, commit: str, record: dict) -> None:
        """Appends one evaluation to `commit`'s note (a JSON list: a commit may be re-evaluated)."""
        records = self.notes(commit) + [record]
        self._git("notes", f"--ref={NOTES_REF}", "add", "-f", "-F", "-", commit, input=json.dumps(records, sort_keys=True))

    def notes(self, commit: str) -> list[dict]:
        try:
            return json.loads(self._git("notes", f"--ref={NOTES_REF}", "show", commit))
        except git.GitCommandError:
            return []

    def all_notes(self) -> dict[str, list[dict]]:
        """commit -> its evaluations, for every annotated commit."""
        try:
            listing = self._git("notes", f"--ref={NOTES_REF}", "list")
        except git.GitCommandError:
            return {}
        out = {}
        for line in listing.splitlines():
            _, commit = line.split()
            out[commit] = self.notes(commit)
        return out

    # --- planning state ------------------------------------------------------------------

    def read_planning(self, name: str) -> str:
        return self.read_file(PLANNING_BRANCH, name)

    def write_planning(self, files: dict[str, str], message: str) -> str:
        """Commits MEMORY.md / BACKLOG.md (or any planning files) on the planning branch."""
        return self.write_files(PLANNING_BRANCH, files, message)

    def write_files(self, branch: str, files: dict[str, str], message: str) -> str:
        """Commits `files` (path -> text) over `branch`'s tree, the rest kept, through a
        throwaway index: no checkout, and no export of what is already there."""
        parent = self.branch_head(branch)
        with tempfile.TemporaryDirectory() as tmp:
            index = os.path.join(tmp, "index")
            if parent:
                self._git("read-tree", parent, index=index)
            for name, text in files.items():
                blob = self._git("hash-object", "-w", "--stdin", input=text)
                self._git("update-index", "--add", "--cacheinfo", f"100644,{blob},{name}", index=index)
            tree = self._git("write-tree", index=index)
        commit = self._git("commit-tree", tree, "-m", message, *(["-p", parent] if parent else []))
        self._git("update-ref", f"refs/heads/{branch}", commit)
        return commit

    def read_file(self, branch: str, path: str) -> str:
        """`path` on `branch` ('' when either is missing)."""
        try:
            return self._git("show", f"refs/heads/{branch}:{path}")
        except git.GitCommandError:
            return ""


def _stdin(text: str):
    f = tempfile.TemporaryFile()
    f.write(text.encode())
    f.seek(0)
    return f
