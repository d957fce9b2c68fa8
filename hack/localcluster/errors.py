"""The one error type of the local cluster: which component failed, why, and its log's tail."""

from __future__ import annotations


class ClusterError(RuntimeError):
    """The cluster could not be started, reached or stopped; says which component and why."""

    def __init__(self, component: str, problem: str, log_tail: str = "") -> None:
        self.component = component
        self.problem = problem
        self.log_tail = log_tail
        message = f"{component}: {problem}"
        if log_tail:
            message += f"\n--- last lines of the {component} log ---\n{log_tail}"
        super().__init__(message)
