"""The one LLM client layer: how to send, retry, journal and pay, for every job that asks a model.

Jobs (annotation, prompt upsampling, captioning later) decide *what* to ask;
this package decides *how*: one retry policy (:class:`Client`), one concurrent
send loop with one budget rule (:func:`send_all`), one crash-safe journal
(:class:`Journal`) read back once by a :class:`Ledger` (done / in flight /
spent), the Batch API (:class:`BatchRunner`), and one :class:`Report`.

Public API::

    from vprefer.llm import Client, Ledger, Outcome, Report, send_all

    ledger = Ledger(run, preset.slug, kind="caption", recorded=ids_in_table, recorded_usd=cost_in_table)
    with ledger:
        async with Client(preset, report) as client:
            await send_all(todo, ask, ledger=ledger, report=report, concurrency=preset.concurrency,
                           estimate=lambda item: cost(preset, 500, 100, batch=False), budget=max_cost)

Only what is exported here is public; jobs never import the submodules.
"""

from vprefer.llm.batch import BatchRunner
from vprefer.llm.client import Client, FatalAPIError, PermanentError, ended, short_error, usage
from vprefer.llm.journal import Journal, read as read_journal
from vprefer.llm.engine import run_job
from vprefer.llm.job import ChatJob, JobBatches, ask
from vprefer.llm.ledger import Ledger, Paid
from vprefer.llm.report import Outcome, Report
from vprefer.llm.send import send_all
from vprefer.llm.settings import ClientSettings, cost

__all__ = ["BatchRunner", "ChatJob", "Client", "ClientSettings", "FatalAPIError", "JobBatches", "Journal", "Ledger",
           "Outcome", "Paid", "PermanentError", "Report", "ask", "cost", "ended", "read_journal", "run_job", "send_all",
           "short_error", "usage"]
