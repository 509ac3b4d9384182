"""The ``notify`` step type: tell the team through a webhook or a command."""

from __future__ import annotations

import json
from typing import Any

from pydantic import Field, field_validator, model_validator

from migration.errors import StepError
from migration.steps._subprocess import (
    command_text,
    last_line,
    run_command,
    stringify_argv,
)
from migration.steps.base import Step, StepContext, StepParams
from migration.steps.http import HeadersParam, RequestFailed, UrlParam, fetch, learn_header_secrets
from migration.steps.registry import register


@register
class Notify(Step["Notify.Params"]):
    """Tell the team: post to a webhook or run a command.

    With ``url``, POSTs ``{"text": text}`` as JSON (Slack and Mattermost incoming
    webhooks accept this as is); any answer but 2xx fails the step. With
    ``command`` (an argv list), runs it with the text in the environment variable
    ``MIGRATION_NOTIFY_TEXT``; a non-zero exit fails the step. Secrets in the text
    are masked before it leaves. Add ``continue_on_error: true`` to the step if a
    failed notification should not stop the migration.

    Example:
        ```yaml
        - id: tell-team
          uses: notify
          with:
            url: "{{ env.SLACK_WEBHOOK_URL }}"
            text: "Migration {{ run.id }}: production is live again"
        - id: tell-ops
          uses: notify
          with:
            command: [sh, -c, 'logger -t migration "$MIGRATION_NOTIFY_TEXT"']
            text: bank details migration done
        ```
    """

    name = "notify"
    outside_effects = True
    outputs = {
        "status": "HTTP status of the webhook's answer (with url)",
        "exit_code": "exit code of the command (with command)",
    }

    class Params(StepParams):
        text: str = Field(description="the message")
        url: UrlParam | None = Field(default=None, description="webhook to POST {text} to as JSON")
        command: list[str] | None = Field(
            default=None, description="argv run with the text in $MIGRATION_NOTIFY_TEXT"
        )
        headers: HeadersParam = Field(default_factory=dict, description="webhook headers")
        timeout: float = Field(default=30.0, gt=0, description="seconds")

        @field_validator("command", mode="before")
        @classmethod
        def _argv_strings(cls, value: Any) -> Any:
            return stringify_argv(value)

        @model_validator(mode="after")
        def _one_target(self) -> Notify.Params:
            if (self.url is None) == (self.command is None):
                raise ValueError("give exactly one of url (webhook) or command")
            if self.command is not None and not self.command:
                raise ValueError("command is an empty list")
            return self

    def run(self, ctx: StepContext[Notify.Params]) -> dict[str, Any]:
        p = ctx.params
        learn_header_secrets(ctx, p.headers)
        text = ctx.redact(p.text)
        if p.url is not None:
            where = ctx.redact(p.url)
            payload = json.dumps({"text": text}).encode()
            headers = {"Content-Type": "application/json", **p.headers}
            try:
                answer = fetch(p.url, method="POST", headers=headers, data=payload, timeout=p.timeout)
            except RequestFailed as exc:
                raise StepError(f"notify: POST {where}: {ctx.redact(str(exc))}") from exc
            if not 200 <= answer.status < 300:
                body = " ".join(answer.text().split())[:200]
                raise StepError(
                    f"notify: POST {where}: expected a 2xx status, got {answer.status}"
                    + (f": {ctx.redact(body)}" if body else ""),
                    outputs={"status": answer.status},
                )
            ctx.log.info("notified", url=where, status=answer.status)
            return {"status": answer.status}
        assert p.command is not None
        result = run_command(
            p.command,
            cwd=ctx.workdir,
            env={**ctx.env, "MIGRATION_NOTIFY_TEXT": text},
            timeout=p.timeout,
            redact=ctx.redact.text,
            log=ctx.log,
            stop_flag=ctx.stop_flag,
        )
        shown = ctx.redact(command_text(p.command))
        if result.timed_out:
            raise StepError(f"notify: {shown} timed out after {p.timeout:g}s")
        if result.exit_code != 0:
            reason = last_line(result.stderr) or last_line(result.stdout)
            raise StepError(
                f"notify: {shown} exited with code {result.exit_code}" + (f": {reason}" if reason else ""),
                outputs={"exit_code": result.exit_code},
            )
        return {"exit_code": result.exit_code}

    def preview(self, ctx: StepContext[Notify.Params]) -> str:
        p = ctx.params
        target = (
            f"POST to {ctx.redact(p.url)}"
            if p.url is not None
            else f"run {ctx.redact(command_text(p.command or []))}"
        )
        return f"would notify ({target}): {ctx.redact(p.text)!r}"
