"""What the API reads: input validation. What it answers is in transcription/representations.py."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import URLValidator
from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from lingoloop.characters import has_control_characters
from transcription import catalogue
from transcription.callbacks import UnsafeDestination, check_callback_url
from transcription.languages import LANGUAGE_CODES
from transcription.models import Channels, Task
from transcription.services import SEGMENT_TEXT_MAX_LENGTH, RunOptions

USER_PRIORITY_RANGE = (-10, 10)
STAFF_PRIORITY_RANGE = (-100, 100)


def validate_destination(url: str) -> str:
    """A URL this service may call (a run's callbackUrl, a webhook endpoint): a well-formed
    http(s) URL whose host is public or allow-listed (transcription/callbacks.py)."""
    try:
        check_callback_url(url)
    except UnsafeDestination as exc:
        raise serializers.ValidationError(str(exc), code="unsafe_callback_url") from None
    try:
        URLValidator(schemes=["http", "https"])(url)
    except DjangoValidationError:
        raise serializers.ValidationError("Enter a valid URL.", code="invalid") from None
    return url


# faster-whisper puts the hotwords before the audio's own text in the decoder's prompt, whose
# room is half the model's context (224 tokens): a bounded phrase, not a dictionary.
HOTWORDS_MAX_LENGTH = 300


def validate_model_name(value: str) -> str:
    if catalogue.get(value) is None:
        raise serializers.ValidationError(
            f"Model {value!r} is not offered here; choose one of "
            f"{', '.join(catalogue.names())} (GET /api/models).",
            code="unknown_model",
        )
    return value


def _multilingual_names() -> str:
    found = [model.name for model in catalogue.available() if model.multilingual]
    return ", ".join(found) or "none is installed here"


def _one_line(text: str) -> str:
    return " ".join(text.split())


SPEAKER_NAMES_MAX_LENGTH = 400
SPEAKER_NAME_MAX_LENGTH = 40


def _speaker_names(text: str) -> list[str]:
    """`Alice, Bob`: one name per channel in order (an empty one keeps `Speaker N`)."""
    if not text.strip():
        return []
    if has_control_characters(text):
        raise serializers.ValidationError(
            {"speakerNames": "Speaker names may not hold control characters."},
            code="invalid_characters",
        )
    names = [_one_line(name) for name in text.split(",")]
    if any(len(name) > SPEAKER_NAME_MAX_LENGTH for name in names):
        raise serializers.ValidationError(
            {
                "speakerNames": f"A speaker name may be at most {SPEAKER_NAME_MAX_LENGTH} "
                "characters."
            },
            code="max_length",
        )
    return names


class ModelNameField(serializers.CharField):
    """An optional model name, taken as sent: " base" is not "base" (DRF trimmed it and the
    name matched, where the documented choices of GET /api/models refuse it)."""

    def __init__(self) -> None:
        super().__init__(required=False, max_length=200, trim_whitespace=False)


class SubmitSerializer(serializers.Serializer):
    file = serializers.FileField(allow_empty_file=True, use_url=False)
    language = serializers.CharField(required=False, allow_blank=True, max_length=16, default="")
    model = ModelNameField()
    task = serializers.ChoiceField(choices=["transcribe", "translate"], default="transcribe")
    wordTimestamps = serializers.BooleanField(required=False, default=False)
    vadFilter = serializers.BooleanField(required=False, default=False)
    beamSize = serializers.IntegerField(required=False, default=5, min_value=1, max_value=10)
    initialPrompt = serializers.CharField(
        required=False, allow_blank=True, max_length=1000, default=""
    )
    hotwords = serializers.CharField(
        required=False, allow_blank=True, max_length=HOTWORDS_MAX_LENGTH, default=""
    )
    channels = serializers.ChoiceField(choices=Channels.choices, default=Channels.MIX)
    speakerNames = serializers.CharField(
        required=False, allow_blank=True, max_length=SPEAKER_NAMES_MAX_LENGTH, default=""
    )
    priority = serializers.IntegerField(required=False, default=0)
    mode = serializers.ChoiceField(choices=["auto", "sync", "async"], default="auto")
    # Checked by hand (validate_callbackUrl): where it points first, then its form.
    callbackUrl = serializers.CharField(
        required=False, allow_blank=True, max_length=2000, default=""
    )

    def validate_model(self, value: str) -> str:
        return validate_model_name(value)

    def validate_language(self, value: str) -> str:
        value = value.strip().lower()
        if value == "auto":  # as the OpenAI-style clients say "detect it"
            return ""
        if value and value not in LANGUAGE_CODES:
            raise serializers.ValidationError(
                f"{value!r} is not a language code Whisper knows (e.g. en, de, fr).",
                code="unknown_language",
            )
        return value

    def validate_priority(self, value: int) -> int:
        user = self.context["request"].user
        low, high = STAFF_PRIORITY_RANGE if user.is_staff else USER_PRIORITY_RANGE
        if not low <= value <= high:
            raise serializers.ValidationError(
                f"Priority must be between {low} and {high}.", code="out_of_range"
            )
        return value

    def validate_callbackUrl(self, value: str) -> str:
        return validate_destination(value) if value else value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        model = catalogue.get(attrs.get("model") or settings.WHISPER_MODEL)
        assert model is not None  # validate_model checked a given one; the default is offered
        attrs["model"] = model.name
        if attrs["language"] and attrs["language"] not in model.languages:
            raise serializers.ValidationError(
                {
                    "language": f"Model {model.name} does not know {attrs['language']!r}"
                    + (" (English only)." if not model.multilingual else ".")
                },
                code="unknown_language",
            )
        if not model.multilingual and attrs["task"] == "translate":
            raise serializers.ValidationError(
                {
                    "task": f"Model {model.name} is English-only and cannot translate; "
                    f"choose a multilingual one ({_multilingual_names()})."
                },
                code="unsupported_task",
            )
        attrs["hotwords"] = _one_line(attrs["hotwords"])
        attrs["speakerNames"] = _speaker_names(attrs["speakerNames"])
        if attrs["speakerNames"] and attrs["channels"] != Channels.SEPARATE:
            raise serializers.ValidationError(
                {"speakerNames": "Speaker names go with channels=separate."},
                code="speaker_names_without_channels",
            )
        return attrs

    def options(self) -> RunOptions:
        data = self.validated_data
        return RunOptions(
            model=data["model"],
            language=data["language"],
            task=data["task"],
            word_timestamps=data["wordTimestamps"],
            vad_filter=data["vadFilter"],
            beam_size=data["beamSize"],
            initial_prompt=data["initialPrompt"],
            hotwords=data["hotwords"],
            channels=data["channels"],
            speaker_names=tuple(data["speakerNames"]),
            priority=data["priority"],
            callback_url=data["callbackUrl"],
            mode=data["mode"],
        )


@extend_schema_field(OpenApiTypes.BINARY)
class UploadField(serializers.FileField):
    """A file part of a multipart body (drf-spectacular would call it a URL)."""


class SubmitRequestSerializer(SubmitSerializer):
    """The multipart upload of `POST /api/transcribe`, with the limits the API enforces."""

    file = UploadField(help_text="The audio; what it is is read from its bytes.")
    model = serializers.ChoiceField(  # type: ignore[assignment]
        choices=[],  # the bundled ones offered when the document is made (__init__)
        required=False,
        help_text="One of GET /api/models (registered models too, which this list leaves out). "
        f"Default: {settings.WHISPER_MODEL}.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["model"].choices = catalogue.names(registered=False)  # type: ignore[attr-defined]

    language = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=16,
        help_text="A Whisper language code (en, de, fr…); empty or `auto`: detect it. "
        "English-only models (`tiny.en`) take only `en`.",
    )
    hotwords = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=HOTWORDS_MAX_LENGTH,
        help_text="Words to favour (names, jargon), as faster-whisper's `hotwords`.",
    )
    channels = serializers.ChoiceField(
        choices=Channels.choices,
        default=Channels.MIX,
        help_text="separate: each channel of a multichannel recording transcribed on its own, "
        "its segments labelled with a speaker (a mono file is a 400).",
    )
    speakerNames = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=SPEAKER_NAMES_MAX_LENGTH,
        help_text="With channels=separate: `Alice, Bob`, one per channel in order; "
        "unnamed channels are `Speaker N`.",
    )
    task = serializers.ChoiceField(
        choices=Task.choices,
        default=Task.TRANSCRIBE,
        help_text="`translate` (into English) needs a multilingual model.",
    )
    priority = serializers.IntegerField(
        required=False,
        default=0,
        min_value=STAFF_PRIORITY_RANGE[0],
        max_value=STAFF_PRIORITY_RANGE[1],
        help_text=f"Higher goes first. Users: {USER_PRIORITY_RANGE[0]} to "
        f"{USER_PRIORITY_RANGE[1]}; staff: {STAFF_PRIORITY_RANGE[0]} to "
        f"{STAFF_PRIORITY_RANGE[1]}.",
    )
    mode = serializers.ChoiceField(
        choices=["auto", "sync", "async"],
        default="auto",
        help_text="auto: sync when the file is small and short and a sync slot is free; "
        "sync above the limits is a 400.",
    )
    callbackUrl = serializers.URLField(
        required=False, allow_blank=True, max_length=2000, help_text="An http(s) URL."
    )


class DetectLanguageSerializer(serializers.Serializer):
    """What `POST /api/detect-language` reads; the model is checked by the detection, which
    says why one cannot be used."""

    file = serializers.FileField(allow_empty_file=True, use_url=False)
    model = ModelNameField()


class DetectLanguageRequestSerializer(DetectLanguageSerializer):
    """The multipart upload of `POST /api/detect-language`, as the API documents it."""

    file = UploadField(help_text="The audio; only its first 30 seconds are listened to.")
    model = serializers.ChoiceField(  # type: ignore[assignment]
        choices=[],  # the bundled multilingual models offered (__init__)
        required=False,
        help_text="A multilingual model of GET /api/models; default: the first one offered.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["model"].choices = [  # type: ignore[attr-defined]
            model.name for model in catalogue.available(registered=False) if model.multilingual
        ]


class TextField(serializers.CharField):
    """Text as JSON sends it: a string, not a number that DRF would turn into one."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class SegmentCorrectionSerializer(serializers.Serializer):
    """The body of `PATCH /api/runs/{runId}/segments/{segmentId}`."""

    # services.clean_segment_text folds the whitespace and checks the characters. Absent: no
    # change (a PATCH names what it changes; this is all it can change).
    text = TextField(
        required=False,
        allow_blank=True,
        trim_whitespace=False,
        max_length=SEGMENT_TEXT_MAX_LENGTH,
        help_text=f"The segment's corrected text, at most {SEGMENT_TEXT_MAX_LENGTH} "
        "characters; line breaks and runs of whitespace become single spaces. Empty: the "
        "segment says nothing (it is left out of txt, srt, vtt and tsv).",
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        # A misspelt field would otherwise be a PATCH that quietly changes nothing.
        if set(self.initial_data) - set(self.fields):
            raise serializers.ValidationError("Only `text` can be changed.", code="unknown_field")
        return attrs


class ClosedBodyExtension(OpenApiSerializerExtension):
    """The schema says that SegmentCorrectionSerializer takes no other field, as it checks."""

    target_class = SegmentCorrectionSerializer

    def map_serializer(self, auto_schema: Any, direction: Any) -> Any:
        schema = auto_schema._map_serializer(self.target, direction, bypass_extensions=True)
        return {**schema, "additionalProperties": False}


def _username_max_length() -> int:
    from django.contrib.auth import get_user_model

    model = get_user_model()
    return int(getattr(model._meta.get_field(model.USERNAME_FIELD), "max_length", None) or 150)


class TokenRequestSerializer(serializers.Serializer):
    # No account has a longer name, and a failed login's name goes into django-axes'
    # AccessAttempt (at most 255 characters): longer, PostgreSQL refused the row, a 500.
    username = serializers.CharField(max_length=_username_max_length())
    password = serializers.CharField(trim_whitespace=False, style={"input_type": "password"})
