"""The toy world's word-level tokenizer, with a chat template, as a normal HF tokenizer.

`tokenizers` WordLevel over whitespace-separated words (`WhitespaceSplit`): "I'm" and "sorry,"
stay single tokens, and decoding joins tokens with single spaces, so decoded text contains the
keyword phrases ("I'm sorry", "I cannot") exactly as the real keyword lists look for them.

The chat format is ``<s><user> PROMPT <assistant> REPLY </s>``, written as a Jinja chat template
so `tokenizer.apply_chat_template` works as for any Hub chat model (the evaluator and the
fine-tuning runner use only that). A system message renders as ``<system> TEXT``. The template
adds the BOS itself and there is no post-processor, so tokenizing a rendered conversation with
`add_special_tokens=False` (what chat pipelines do) gives each special token once.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerFast

from . import lexicon

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
ROLE_TOKENS = ("<system>", "<user>", "<assistant>")
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS, *ROLE_TOKENS)

# Whitespace around role tokens is irrelevant (WhitespaceSplit drops it); the generation prompt
# ends with "<assistant>" so that the first generated token is the reply's first word.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "<assistant> {{ message['content'] }} {{ eos_token }}"
    "{% elif message['role'] in ['system', 'user'] %}"
    "<{{ message['role'] }}> {{ message['content'] }} "
    "{% else %}"
    "{{ raise_exception('roles are system, user and assistant') }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)

# Room for any toy conversation (under 40 tokens) plus the evaluator's longest generation.
MODEL_MAX_LENGTH = 512


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The toy tokenizer: special tokens first (ids 0..6), then `lexicon.vocabulary()` sorted.

    Deterministic and seed-independent: every toy world has the same tokenizer.
    """
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    vocab = {tok: i for i, tok in enumerate((*SPECIAL_TOKENS, *lexicon.vocabulary()))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t in SPECIAL_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        extra_special_tokens=list(ROLE_TOKENS), chat_template=CHAT_TEMPLATE,
        model_max_length=MODEL_MAX_LENGTH)
