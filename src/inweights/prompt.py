"""The one prompt format that training, `ask`, evaluation and serving share.

Kept in a module of its own so that none of them owns it: synthetic QA is trained on `QA_TEMPLATE`, `ask` and
the server put the user's question into it, and the evaluation conditions score answers after it.
"""

from __future__ import annotations

QA_TEMPLATE = "Question: {question}\nAnswer:"
"""A question and the start of its answer; the model's completion is the answer."""


CONTEXT_TEMPLATE = "{context}\n\n" + QA_TEMPLATE
"""The same question with a document in front of it: the in-context and RAG baselines."""


def qa_prompt(question: str, context: str | None = None) -> str:
    """The prompt for one question, in the format the memory was trained on; with `context`, the text goes first."""
    if context:
        return CONTEXT_TEMPLATE.format(context=context.strip(), question=question.strip())
    return QA_TEMPLATE.format(question=question.strip())
