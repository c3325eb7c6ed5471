"""Matching face embeddings against a gallery, and the distance threshold for "unknown".

A face's distance to a person is the squared L2 distance to that person's *mean* gallery
embedding, renormalised to unit length (the direction the person's pictures agree on), not to
the closest of their pictures. The minimum looked attractive for few, varied pictures per
person, but it gives a stranger as many chances to resemble someone as the gallery has
pictures, and the threshold chosen on LFW's one-to-one pairs then lets most strangers through.
Measured once with OpenFace nn4.small2.v1 at its LFW View 2 threshold (1.072): gallery
five-celebrity/train (89 usable pictures of 5 people), probes the 24 five-celebrity/val faces
found and one picture each of 200 random LFW people (strangers): minimum 92% of the known
faces named correctly and 19% of the strangers unknown; renormalised mean 92% and 75%. Gallery
4 LFW people x 8 pictures, probes 4 other pictures of each: minimum 100% / 43%, mean 100% / 65%.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


class EmbeddingGallery(Protocol):
    """What matching needs from a gallery (see utils.recognition.gallery.Gallery)."""

    people: list[str]
    embeddings: np.ndarray  # (N, D) float32
    person_index: np.ndarray  # (N,) int: row -> position in people


@dataclass(frozen=True)
class Match:
    """The closest person to one face; name is None when the distance is above the threshold."""

    name: str | None
    nearest: str | None
    distance: float

    @property
    def known(self) -> bool:
        return self.name is not None


DEFAULT_FALSE_NAMING = 0.01  # share of strangers the default threshold lets be named as a gallery person


class NoThresholdError(LookupError):
    """The model has no LFW evaluation to take a default threshold from."""


def squared_distances(embeddings: np.ndarray, references: np.ndarray) -> np.ndarray:
    """(M, N) squared L2 distances between two sets of row vectors."""
    a = np.asarray(embeddings, np.float64)
    b = np.asarray(references, np.float64)
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def person_centres(gallery: EmbeddingGallery) -> np.ndarray:
    """(P, D) mean embedding of each person's pictures, scaled back to unit length."""
    centres = np.zeros((len(gallery.people), gallery.embeddings.shape[1]))
    np.add.at(centres, gallery.person_index, np.asarray(gallery.embeddings, np.float64))
    norms = np.linalg.norm(centres, axis=1, keepdims=True)
    return centres / np.maximum(norms, 1e-12)


def person_distances(embeddings: np.ndarray, gallery: EmbeddingGallery) -> np.ndarray:
    """(M, P) squared L2 distance of each face to each person's renormalised mean embedding."""
    return squared_distances(embeddings, person_centres(gallery))


def match(embeddings: np.ndarray, gallery: EmbeddingGallery, threshold: float) -> list[Match]:
    """The nearest person for each embedding, or unknown when their distance exceeds threshold."""
    if len(embeddings) == 0:
        return []
    if not gallery.people:
        return [Match(None, None, float("inf")) for _ in embeddings]
    distances = person_distances(embeddings, gallery)
    best = distances.argmin(axis=1)
    matches = []
    for row, person in enumerate(best):
        distance = float(distances[row, person])
        name = gallery.people[person]
        matches.append(Match(name if distance <= threshold else None, name, distance))
    return matches


def evaluate_command(model_name: str, protocol: str | None = None) -> str:
    """The command that evaluates a model on LFW and stores its threshold (or impostor distances)."""
    return f"python evaluate.py --model {model_name}" + (f" --protocol {protocol}" if protocol else "")


def pair_false_accept_rate(false_naming: float, people: int) -> float:
    """The per-pair false-accept rate at which a stranger, compared with each of ``people``
    gallery people, is named as one of them with probability ``false_naming``:
    1 - (1 - false_naming) ** (1 / people)."""
    if not 0 < false_naming < 1 or people < 1:
        raise ValueError(f"need 0 < false_naming < 1 and people >= 1, got {false_naming} and {people}")
    return 1.0 - (1.0 - false_naming) ** (1.0 / people)


def threshold_for_false_naming(impostors: dict, false_naming: float, people: int) -> float:
    """The distance below which a stranger is named as one of ``people`` gallery people with
    probability about ``false_naming``, read from impostor-distance quantiles (``far``, ``distance``,
    as utils.evaluation.metrics.impostor_quantiles stores them; interpolated in log FAR, and the
    smallest stored distance when the rate needed is below the smallest stored one)."""
    far = np.log10(np.asarray(impostors["far"], np.float64))
    distance = np.asarray(impostors["distance"], np.float64)
    return float(np.interp(np.log10(pair_false_accept_rate(false_naming, people)), far, distance))


@dataclass(frozen=True)
class DefaultThreshold:
    """How a model's default threshold is chosen: for a target share of strangers named
    (``impostors`` from its LFW unseen-people evaluation) or, without those, its LFW View 2
    accuracy-optimal threshold (``fallback``)."""

    model_name: str
    false_naming: float
    impostors: dict | None
    fallback: float | None

    def value(self, people: int) -> float:
        """The threshold for a gallery of ``people`` people."""
        if self.impostors is None:
            return float(self.fallback)
        return threshold_for_false_naming(self.impostors, self.false_naming, max(people, 1))

    def describe(self, people: int) -> str:
        """'threshold 0.870: about 1% of strangers named as one of the 5 people (...)'."""
        value = self.value(people)
        if self.impostors is None:
            return (f"threshold {value:.3f} (the LFW View 2 accuracy threshold of {self.model_name}; it has no "
                    f"impostor distances stored, so the share of strangers named is not known and can be high: "
                    f"run `{evaluate_command(self.model_name, 'view2-unseen')}`)")
        return (f"threshold {value:.3f}: about {self.false_naming:.0%} of strangers named as one of the {people} "
                f"{'person' if people == 1 else 'people'} (from {self.model_name}'s distances of LFW faces to "
                f"the mean embeddings of {self.impostors.get('n_people', 'other')} other LFW people, none of them "
                f"trained on)")


def default_threshold(model_name: str, false_naming: float = DEFAULT_FALSE_NAMING) -> DefaultThreshold:
    """The model's default threshold rule, from its LFW evaluations in weights/<model>.json.

    Raises NoThresholdError (with the command to run) when the model has not been evaluated.
    """
    from models.weights import metadata_path, read_metadata  # imports Keras: only when needed

    metadata = read_metadata(model_name)
    unseen = metadata.get("lfw_view2_unseen") or {}
    if unseen.get("impostor_quantiles") and unseen.get("metric", "sqeuclidean") == "sqeuclidean":
        return DefaultThreshold(model_name, false_naming, unseen["impostor_quantiles"], None)
    evaluation = metadata.get("lfw_view2") or {}
    threshold = evaluation.get("threshold")
    if threshold is None:
        raise NoThresholdError(
            f"model {model_name} has no LFW evaluation yet ({metadata_path(model_name)} has neither "
            f"lfw_view2_unseen impostor distances nor an lfw_view2 threshold), so there is no default distance "
            f"threshold. Run `{evaluate_command(model_name, 'view2-unseen')}` once, or pass --threshold "
            f"DISTANCE (squared L2; smaller is stricter)")
    if evaluation.get("metric", "sqeuclidean") != "sqeuclidean":
        raise NoThresholdError(
            f"the LFW threshold of {model_name} in {metadata_path(model_name)} is a {evaluation['metric']} "
            f"distance, recognition uses squared L2: run `{evaluate_command(model_name, 'view2-unseen')}` (its "
            f"default metric) or pass --threshold")
    return DefaultThreshold(model_name, false_naming, None, float(threshold))
