"""The runtime checker that ``--jaxtyping-packages`` applies to every annotated function of
fitax in the tests: beartype, with the numeric tower (an ``int`` passes where a ``float`` is
annotated, as PEP 484 intends and as every caller writes ``8`` for ``8.0``)."""

import beartype

checker = beartype.beartype(conf=beartype.BeartypeConf(is_pep484_tower=True))
