"""Forms of the web pages. They check types and shapes only; generation.services checks the farm's rules and
its InvalidInput errors are put back onto the fields here."""

from django import forms
from django.conf import settings
from django.contrib.auth.forms import UserCreationForm

from generation.exceptions import InvalidInput
from generation.models import TASK_INPUT_FIELDS, ApiToken, PreviewMethod, Task
from generation.web_selectors import GalleryFilters

CUSTOM = "custom"


SIZE_PRESETS = ("512x512", "768x768", "512x768", "768x512", "1024x1024")
SIZE_CHOICES = [(key, key.replace("x", " × ")) for key in SIZE_PRESETS] + [(CUSTOM, "Custom")]


class GenerateForm(forms.Form):
    """The task's input fields (models.TASK_INPUT_FIELDS, their form fields made from the model's) as people
    set them: sizes from presets, choices from what the workers report. Priority and callbacks are for
    programs (the REST API). Not a ModelForm: the farm's rules are the service's, whose messages name the
    fields, and a model's constraint would refuse first with a message for the whole form."""

    size = forms.ChoiceField(choices=SIZE_CHOICES, initial="512x512", widget=forms.RadioSelect)
    sampler = forms.ChoiceField(initial="euler")
    scheduler = forms.ChoiceField(initial="normal")
    checkpoint = forms.ChoiceField(required=False)
    template = forms.ChoiceField(label="Workflow template")

    TASK_FIELDS = [f for f in TASK_INPUT_FIELDS if f not in ("priority", "callback_url")]
    LABELS = {
        "negative_prompt": "Negative prompt",
        "cfg": "CFG scale",
        "batch_size": "Batch size",
        "preview_method": "Live preview",
    }
    HELP_TEXTS = {
        "seed": "Leave blank for a random seed.",
        "preview_method": "Watch the image form on the task page while it renders.",
    }
    WIDGETS = {
        "prompt": forms.Textarea(
            attrs={
                "rows": 4,
                "placeholder": "A lighthouse on a cliff at dusk, oil painting",
                "autofocus": True,
            }
        ),
        "negative_prompt": forms.Textarea(attrs={"rows": 2, "placeholder": "blurry, low quality"}),
        "cfg": forms.NumberInput(attrs={"step": "0.5"}),
        "seed": forms.TextInput(
            attrs={"inputmode": "numeric", "placeholder": "Random", "autocomplete": "off"}
        ),
    }

    def __init__(
        self,
        *args,
        checkpoints: list[dict],
        templates: list[str],
        samplers: list[str],
        schedulers: list[str],
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        made = forms.fields_for_model(
            Task,
            fields=self.TASK_FIELDS,
            widgets=self.WIDGETS,
            labels=self.LABELS,
            help_texts=self.HELP_TEXTS,
        )
        self.fields = {**made, **self.fields}  # the declared fields (choices, the size picker) win
        farm = settings.T2I
        for name in ("prompt", "negative_prompt"):
            self.fields[name].strip = False
        for name in self.TASK_FIELDS:
            # As in the REST API, a field left out takes the model's default (a size preset sets width and
            # height; no seed means a random one).
            if Task._meta.get_field(name).has_default() or name in ("width", "height", "seed"):
                self.fields[name].required = False
        self.fields["checkpoint"].choices = [("", "Farm default")] + [
            (c["name"], f"{c['name']} ({_workers(c['online_workers'])})") for c in checkpoints
        ]
        self.fields["template"].choices = [(name, name) for name in templates]
        self.fields["template"].initial = farm["DEFAULT_TEMPLATE"]
        self.fields["sampler"].choices = [(name, name) for name in samplers]
        self.fields["scheduler"].choices = [(name, name) for name in schedulers]
        # People choose off or on (and how detailed); "none" and "default" are ComfyUI clients' words.
        self.fields["preview_method"].choices = [
            (value, label)
            for value, label in PreviewMethod.choices
            if value not in (PreviewMethod.NONE, PreviewMethod.DEFAULT)
        ]
        # Browser hints only; the service decides.
        for name in ("width", "height"):
            self.fields[name].widget.attrs |= {
                "min": farm["SIZE_MIN"],
                "max": farm["SIZE_MAX"],
                "step": farm["SIZE_MULTIPLE"],
            }
        self.fields["steps"].widget.attrs |= {"min": 1, "max": farm["STEPS_MAX"]}
        self.fields["batch_size"].widget.attrs |= {"min": 1, "max": farm["BATCH_MAX"]}

    @classmethod
    def initial_from_query(cls, query) -> dict:
        """Prefill from a query string (“Generate again”, “Use these settings”): known keys only."""
        names = [*cls.TASK_FIELDS, "template"]
        initial = {name: query[name] for name in names if query.get(name, "") != ""}
        if "width" in initial or "height" in initial:
            key = f"{initial.get('width', 512)}x{initial.get('height', 512)}"
            initial["size"] = key if key in SIZE_PRESETS else CUSTOM
        return initial

    def clean(self) -> dict:
        data = super().clean()
        size = data.get("size")
        if size and size != CUSTOM:
            data["width"], data["height"] = (int(n) for n in size.split("x"))
        elif size == CUSTOM:
            for name in ("width", "height"):
                if data.get(name) is None and name not in self.errors:
                    self.add_error(name, "Enter a size for a custom image.")
        return data

    def task_fields(self) -> dict:
        """The cleaned task fields, as generation.services.task_submit takes them."""
        names = [*self.TASK_FIELDS, "template"]
        return {name: self.cleaned_data[name] for name in names if self.cleaned_data.get(name) is not None}

    def add_service_errors(self, exc: InvalidInput) -> None:
        """Show the service's field errors next to the fields (width/height on the size picker when a
        preset was chosen; unknown names at the top of the form)."""
        preset = self.cleaned_data.get("size") not in (None, CUSTOM)
        for name, messages in exc.fields.items():
            field = name
            if name in ("width", "height") and preset:
                field = "size"
            if field not in self.fields:
                field = None
            for message in messages:
                self.add_error(field, message)
        if not exc.fields:
            self.add_error(None, exc.detail)


def _workers(count: int) -> str:
    if count == 0:
        return "no worker online"
    return "1 worker online" if count == 1 else f"{count} workers online"


class GalleryFilterForm(forms.Form):
    """The gallery's search and filters, read from the query string; invalid values are ignored."""

    q = forms.CharField(
        required=False,
        max_length=200,
        label="Search prompts",
        widget=forms.TextInput(attrs={"type": "search", "placeholder": "Search prompts"}),
    )
    mine = forms.BooleanField(required=False, label="Only mine")
    # Any name filters (a checkpoint no worker has any more still has images); CharField refuses NUL bytes.
    checkpoint = forms.CharField(required=False, max_length=255, widget=forms.Select)
    date_from = forms.DateField(required=False, label="From", widget=forms.DateInput(attrs={"type": "date"}))
    date_to = forms.DateField(required=False, label="To", widget=forms.DateInput(attrs={"type": "date"}))

    def __init__(self, *args, checkpoints: list[str], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        chosen = self.data.get("checkpoint", "")
        keep = chosen and len(chosen) <= 255 and "\x00" not in chosen
        names = sorted(set(checkpoints) | ({chosen} if keep else set()))
        self.fields["checkpoint"].widget.choices = [("", "Any checkpoint")] + [(n, n) for n in names]

    def filters(self) -> GalleryFilters:
        self.is_valid()  # fields that do not validate are left out of cleaned_data, so they filter nothing
        data = self.cleaned_data
        return GalleryFilters(
            q=(data.get("q") or "").strip(),
            mine=bool(data.get("mine")),
            checkpoint=data.get("checkpoint") or "",
            date_from=data.get("date_from"),
            date_to=data.get("date_to"),
        )


class SignUpForm(UserCreationForm):
    """Django's sign-up form, with the password rules' messages on “Password” (where the password was typed,
    not on its confirmation) and both password fields kept filled in when the form comes back with errors."""

    class Meta(UserCreationForm.Meta):
        fields = ("username",)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for name in ("password1", "password2"):
            self.fields[name].widget.render_value = True

    def validate_password_for_user(self, user, password_field_name: str = "password1", **kwargs) -> None:  # noqa: S107
        super().validate_password_for_user(user, password_field_name=password_field_name, **kwargs)


class ApiTokenForm(forms.Form):
    kind = forms.ChoiceField(
        required=False,
        choices=ApiToken.Kind.choices,
        initial=ApiToken.Kind.API,
        widget=forms.RadioSelect,
        help_text="A ComfyUI URL key goes in the base URL of a ComfyUI client that cannot send headers "
        "(…/comfy/k/<key>); it opens the ComfyUI front door only.",
    )
    name = forms.CharField(max_length=100, required=False, help_text="What you will use it for.")
    expires_in_days = forms.IntegerField(
        label="Expires after (days)", required=False, min_value=1, max_value=3650, help_text="Empty: never."
    )


class WorkflowRunForm(forms.Form):
    """The "Run a workflow" page: an API-format workflow pasted, or a .json file or ComfyUI PNG chosen. The
    image for each LoadImage node comes as a file field `input_<node id>` (read by the view)."""

    workflow = forms.CharField(
        label="Workflow (API format JSON)",
        required=False,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 12, "spellcheck": "false", "class": "code"}),
        help_text="In ComfyUI: Workflow › Export (API). Or the body of a POST /prompt.",
    )
    workflow_file = forms.FileField(
        label="…or a file",
        required=False,
        widget=forms.ClearableFileInput(attrs={"accept": ".json,application/json,image/png"}),
        help_text="A .json workflow, or a PNG that ComfyUI saved (the workflow is read from it).",
    )

    def add_service_errors(self, exc: InvalidInput) -> None:
        """The service's field errors next to their fields; others at the top of the form."""
        for name, messages in (exc.fields or {None: [exc.detail]}).items():
            for message in messages:
                self.add_error(name if name in self.fields else None, message)
