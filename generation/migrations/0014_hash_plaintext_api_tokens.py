"""Existing DRF tokens (rest_framework.authtoken, plain text) become hashed ApiTokens, and the plain text goes.

Each user's old key keeps working (the same string, now looked up by its SHA-256), so nobody is locked out;
the rows of `authtoken_token` are deleted, so no token is left readable in the database. Databases that never
had the authtoken app have nothing to do.
"""

import hashlib

from django.db import migrations

OLD_TABLE = "authtoken_token"


def hash_old_tokens(apps, schema_editor) -> None:
    connection = schema_editor.connection
    if OLD_TABLE not in connection.introspection.table_names():
        return
    ApiToken = apps.get_model("generation", "ApiToken")
    table = connection.ops.quote_name(OLD_TABLE)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT key, user_id, created FROM {table}")  # noqa: S608 (a constant name)
        rows = cursor.fetchall()
    for key, user_id, created in rows:
        token = ApiToken.objects.create(
            user_id=user_id,
            name="API token (from before hashing)",
            token_hash=hashlib.sha256(key.encode()).hexdigest(),
            token_hint=key[:4],
        )
        ApiToken.objects.filter(pk=token.pk).update(created_at=created)
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {table}")  # noqa: S608


class Migration(migrations.Migration):
    dependencies = [("generation", "0013_api_tokens")]

    operations = [migrations.RunPython(hash_old_tokens, migrations.RunPython.noop, elidable=True)]
