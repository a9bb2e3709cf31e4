"""Forms of the web pages. They check types and shapes only; generation.services checks the farm's rules and
its InvalidInput errors are put back onto the fields here."""

from django import forms
from django.conf import settings
from django.contrib.auth.forms import UserCreationForm

from generation.exceptions import InvalidInput
from generation.services import TaskInput
from generation.web_selectors import GalleryFilters

CUSTOM = "custom"


SIZE_PRESETS = ("512x512", "768x768", "512x768", "768x512", "1024x1024")
SIZE_CHOICES = [(key, key.replace("x", " × ")) for key in SIZE_PRESETS] + [(CUSTOM, "Custom")]
# Everything the form carries, in the order a query string prefills it (?prompt=…&seed=…).
PREFILL_FIELDS = (
    "prompt", "negative_prompt", "width", "height", "steps", "cfg", "seed", "sampler", "scheduler",
    "checkpoint", "template", "batch_size",
)  # fmt: skip


class GenerateForm(forms.Form):
    prompt = forms.CharField(
        strip=False,
        widget=forms.Textarea(
            attrs={
                "rows": 4,
                "placeholder": "A lighthouse on a cliff at dusk, oil painting",
                "autofocus": True,
            }
        ),
    )
    negative_prompt = forms.CharField(
        required=False,
        strip=False,
        label="Negative prompt",
        widget=forms.Textarea(attrs={"rows": 2, "placeholder": "blurry, low quality"}),
    )
    size = forms.ChoiceField(choices=SIZE_CHOICES, initial="512x512", widget=forms.RadioSelect)
    width = forms.IntegerField(required=False, initial=512)
    height = forms.IntegerField(required=False, initial=512)
    steps = forms.IntegerField(initial=20)
    cfg = forms.FloatField(initial=7.0, label="CFG scale", widget=forms.NumberInput(attrs={"step": "0.5"}))
    seed = forms.IntegerField(
        required=False,
        help_text="Leave blank for a random seed.",
        widget=forms.TextInput(
            attrs={"inputmode": "numeric", "placeholder": "Random", "autocomplete": "off"}
        ),
    )
    sampler = forms.ChoiceField(initial="euler")
    scheduler = forms.ChoiceField(initial="normal")
    checkpoint = forms.ChoiceField(required=False)
    template = forms.ChoiceField(label="Workflow template")
    batch_size = forms.IntegerField(initial=1, label="Batch size")

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
        farm = settings.T2I
        self.fields["checkpoint"].choices = [("", "Farm default")] + [
            (c["name"], f"{c['name']} ({_workers(c['online_workers'])})") for c in checkpoints
        ]
        self.fields["template"].choices = [(name, name) for name in templates]
        self.fields["template"].initial = farm["DEFAULT_TEMPLATE"]
        self.fields["sampler"].choices = [(name, name) for name in samplers]
        self.fields["scheduler"].choices = [(name, name) for name in schedulers]
        # Browser hints only; the service decides.
        for name in ("width", "height"):
            self.fields[name].widget.attrs |= {
                "min": farm["SIZE_MIN"],
                "max": farm["SIZE_MAX"],
                "step": farm["SIZE_MULTIPLE"],
            }
        self.fields["steps"].widget.attrs |= {"min": 1, "max": farm["STEPS_MAX"]}
        self.fields["batch_size"].widget.attrs |= {"min": 1, "max": farm["BATCH_MAX"]}

    @staticmethod
    def initial_from_query(query) -> dict:
        """Prefill from a query string (“Generate again”, “Use these settings”): known keys only."""
        initial = {name: query[name] for name in PREFILL_FIELDS if query.get(name, "") != ""}
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

    def to_task_input(self) -> TaskInput:
        data = self.cleaned_data
        return TaskInput(
            prompt=data["prompt"],
            negative_prompt=data["negative_prompt"],
            width=data["width"],
            height=data["height"],
            steps=data["steps"],
            cfg=data["cfg"],
            sampler=data["sampler"],
            scheduler=data["scheduler"],
            seed=data["seed"],
            batch_size=data["batch_size"],
            checkpoint=data["checkpoint"],
            template=data["template"],
        )

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
    class Meta(UserCreationForm.Meta):
        fields = ("username",)
