"""Why a solve stopped: an enumeration whose members carry their message."""

from __future__ import annotations

import enum


class RESULTS(enum.IntEnum):
    """Outcome of :func:`fitax._minimize.newton`.

    Inside compiled code a result is an integer array (``jnp.asarray(RESULTS.converged)``);
    on the host ``RESULTS(int(status)).message`` says why the solve stopped. Like
    optimistix's ``RESULTS``, but a plain :class:`enum.IntEnum` so that batch results can hold
    the codes in a NumPy array.
    """

    converged = 0, "converged (EDM below tolerance, Hessian positive definite)"
    max_steps_reached = 1, "maximum number of steps reached before the EDM fell below tolerance"
    no_progress = 2, (
        "no step decreases the objective, but the EDM is above tolerance "
        "(flat direction, non-smooth objective, or an indefinite Hessian)"
    )
    nonfinite = 3, "the objective, its gradient or its Hessian became non-finite"

    message: str

    def __new__(cls, code: int, message: str):
        member = int.__new__(cls, code)
        member._value_ = code
        member.message = message
        return member
