"""``imagestream classifier ...`` and ``imagestream search``: registered on the main CLI.

Each handler takes the parsed arguments and the settings (tests pass their own), prints
what a person needs, and returns the exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from consumers.client.search import search_text
from consumers.config.settings import Settings
from consumers.models.classifier_heads import HeadError, list_heads, train
from consumers.models.head_features import FeatureError, parse_features
from consumers.vectorstore.store import StoreUnavailable


def add_commands(sub: Any) -> None:
    classifier = sub.add_parser("classifier", help="classifier heads over stored CLIP vectors")
    actions = classifier.add_subparsers(dest="action", required=True)
    train = actions.add_parser("train", help="train a head from image_id,label rows")
    train.add_argument("name", help="the head's name (letters, digits, - and _)")
    train.add_argument("--labels", type=Path, required=True, help="CSV of image_id,label")
    train.add_argument("--method", choices=["logreg", "stack"], default="logreg")
    train.add_argument("--test-size", type=float, default=0.25, help="held-out share")
    train.add_argument("--tenant", default="", help="the images' collection (tenant)")
    train.add_argument(
        "--features",
        default="clip",
        help="clip, or clip,ocr: also the images' OCR text (TF-IDF into naive Bayes, stacked)",
    )
    train.set_defaults(handler=lambda args: classifier_train(Settings(), args))
    listing = actions.add_parser("list", help="the heads in IMAGESTREAM_CLASSIFY__HEADS_DIR")
    listing.set_defaults(handler=lambda args: classifier_list(Settings(), args))
    search = sub.add_parser("search", help="text-to-image search (CLIP, words, or both)")
    search.add_argument("text", help="what to look for, e.g. 'a hedgehog'")
    search.add_argument("--top-k", type=int, default=5)
    search.add_argument("--tenant", help="search this collection (tenant) only")
    search.add_argument("--image-ids", nargs="+", help="rank only these images")
    search.add_argument(
        "--mode",
        choices=["vector", "text", "hybrid"],
        default="vector",
        help="vector: CLIP similarity; text: BM25 over captions and OCR text; hybrid: both",
    )
    search.add_argument("--timeout", type=float, default=60.0, help="seconds to wait")
    search.set_defaults(handler=lambda args: search_command(Settings(), args))


def classifier_train(settings: Settings, args: argparse.Namespace) -> int:
    try:
        features = tuple(parse_features(args.features))
        info = train(
            settings, args.name, args.labels, args.method, args.test_size, args.tenant, features
        )
    except (HeadError, FeatureError, OSError, StoreUnavailable) as exc:
        print(f"imagestream classifier: {exc}", file=sys.stderr)
        return 1
    if info.accuracy is None:
        print(f"{info.name}: too few images for a held-out split ({info.n_train} labelled)")
    else:
        print(f"{info.name}: held-out accuracy {info.accuracy:.3f} ({info.n_test} images)")
    folder = settings.classify.heads_dir
    over = f"{info.method} on {'+'.join(info.features)} over {len(info.classes)} classes"
    print(f"{info.name}: {over}, saved in {folder}")
    return 0


def classifier_list(settings: Settings, args: argparse.Namespace) -> int:
    for head in list_heads(settings.classify.heads_dir):
        accuracy = "n/a" if head.accuracy is None else f"{head.accuracy:.3f}"
        print(f"{head.name:<20} {head.method:<7} accuracy {accuracy:<6} {', '.join(head.classes)}")
    return 0


def search_command(settings: Settings, args: argparse.Namespace) -> int:
    result = asyncio.run(
        search_text(
            settings,
            args.text,
            top_k=args.top_k,
            tenant=args.tenant,
            image_ids=args.image_ids,
            mode=args.mode,
            timeout_s=args.timeout,
        )
    )
    if result is None:
        print(f"imagestream search: no result within {args.timeout:.0f}s", file=sys.stderr)
        return 1
    if result.error is not None:
        print(
            f"imagestream search: {result.error.code.value}: {result.error.message}",
            file=sys.stderr,
        )
        return 1
    if result.truncated:
        print("(the text was cut to the model's token limit)")
    for rank, hit in enumerate(result.neighbors, 1):
        found = f"  ({', '.join(hit.lists)})" if hit.lists else ""
        print(f"{rank:>3}  {hit.score:.3f}  {hit.id}{found}")
    if not result.neighbors:
        print("(no images)")
    return 0
