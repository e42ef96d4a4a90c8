"""The one prompt format that training, `ask`, evaluation and serving share.

Kept in a module of its own so that none of them owns it: synthetic QA is trained on `QA_TEMPLATE`, `ask` and
the server put the user's question into it, and the evaluation conditions score answers after it.

A base whose tokenizer has a chat template (an instruct model) reads the same question as a user turn of its
template instead, and the answer as the assistant's turn, ended by its end-of-turn token: `render` and
`answer_format` are applied where prompts are tokenized (training rows, answering, evaluation, serving), so the
synthetic data and its cache stay in the one plain form. A base without one (the embedded gemma-3-270m) keeps
the plain "Question: ...\nAnswer:" format.
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


ANSWER_CUE = "\nAnswer:"


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render(tokenizer, prompt: str) -> str:
    """`prompt` as the base reads it: a QA prompt (see qa_prompt) in the base's chat template when it has one, the
    question and any document before it as the user's turn; anything else, and everything for a base without a
    chat template, unchanged. The template's BOS is left to the tokenizer, which adds its own."""
    if not has_chat_template(tokenizer) or not prompt.endswith(ANSWER_CUE):
        return prompt
    return chat_text(tokenizer, [{"role": "user", "content": prompt[: -len(ANSWER_CUE)].strip()}])


def chat_text(tokenizer, messages: list[dict]) -> str:
    """Messages in the tokenizer's chat template, ready for the assistant's turn, less a leading BOS that the
    tokenizer adds again when it encodes the text."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    bos = tokenizer.bos_token
    if bos and text.startswith(bos) and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]:
        text = text[len(bos):]
    return text


def answer_format(tokenizer, prompt: str, completion: str, end_id: int | None) -> tuple[str, str, int | None]:
    """(prompt, completion, end token) of a training example as the base reads it: for a QA prompt on a base with
    a chat template, the rendered prompt, the answer without its leading space and the end-of-turn token;
    otherwise as given (a plain answer ends with `end_id`, a newline)."""
    rendered = render(tokenizer, prompt)
    if rendered == prompt:
        return prompt, completion, end_id
    return rendered, completion.strip(), end_of_turn_id(tokenizer)


def end_of_turn_id(tokenizer) -> int | None:
    """The token that ends an assistant turn: Gemma's <end_of_turn> where the vocabulary has it, else EOS (which
    is the end-of-turn token of Qwen's and Llama-3's instruct tokenizers)."""
    token = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    if token is not None and token != tokenizer.unk_token_id:
        return token
    return tokenizer.eos_token_id
