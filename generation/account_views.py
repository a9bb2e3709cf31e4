"""The account's API tokens page: list, make (the token shown once) and revoke the signed-in user's tokens
and ComfyUI URL keys."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from generation import services
from generation.exceptions import InvalidInput, NotFound
from generation.forms import ApiTokenForm
from generation.models import ApiToken


@never_cache  # the answer to a POST shows a new token: no cache may keep it
@login_required
def api_tokens(request: HttpRequest) -> HttpResponse:
    form = ApiTokenForm(request.POST or None)
    new_token = new_base_url = None
    if request.method == "POST" and form.is_valid():
        try:
            made, new_token = services.api_token_create(
                user=request.user,
                name=form.cleaned_data["name"],
                expires_in_days=form.cleaned_data["expires_in_days"],
                kind=form.cleaned_data["kind"] or ApiToken.Kind.API,
            )
            if made.kind == ApiToken.Kind.COMFY_KEY:
                new_base_url = request.build_absolute_uri(f"/comfy/k/{new_token}")
            form = ApiTokenForm()
        except InvalidInput as exc:
            for field, errors in exc.fields.items():
                for error in errors:
                    form.add_error(field if field in form.fields else None, error)
    tokens = request.user.api_tokens.all()
    status = 400 if form.errors else 200
    context = {"form": form, "tokens": tokens, "new_token": new_token, "new_base_url": new_base_url}
    return render(request, "generation/api_tokens.html", context, status=status)


@require_POST
@login_required
def api_token_revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    try:
        services.api_token_revoke(user=request.user, token_id=token_id)
    except NotFound:
        raise Http404("No such token.")
    messages.success(request, "The token is revoked: it no longer works.")
    return redirect("web:api-tokens")
