"""Email rendering: templates/emails/<name>/{subject.txt, body.txt, body.html} with a shared base.

HTML is autoescaped (names and messages come from Stripe and from customers: hostile until
proven otherwise); plain text and subjects are not, since they are never parsed as markup.
StrictUndefined turns a misspelt variable into an error at render time instead of a blank in
an owner's inbox: the context builder (worker.delivery.email_context) defines every optional value,
as None when unknown. The subject is forced onto one line (a header cannot hold a newline),
and the CSS of the HTML part is inlined, since many mail clients drop <style> blocks.

The templates are the folders of templates/emails: a folder holding subject.txt, body.txt and
body.html is an email, named after the folder (the policy's steps name them; what each reads is
declared in worker/delivery/email_contract.py). EMAIL_TEMPLATES_DIR (issue 14) is searched before the
built-in folder: a file there replaces the built-in file of the same name (`reminder/subject.txt`,
`_base.html` ...), so an operator rewords one subject without copying every template, and a new
folder there adds an email (an email-only step: that folder and one line in the policy).

Language (issue 14): the templates' words are gettext messages (`{% trans %}` blocks and `_()`,
jinja2.ext.i18n, trimmed); the catalogue is chosen per render by the context's `locale`
(worker.delivery.email_locale), so one environment serves every language and a rendered email's language is
fixed when it is written to the outbox.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import css_inline
from jinja2 import (ChoiceLoader, Environment, FileSystemLoader, StrictUndefined, TemplateSyntaxError, pass_context,
                    select_autoescape)
from markupsafe import Markup

from config.settings import PROJECT_ROOT
from worker.delivery import email_locale
from worker.pure.locales import DEFAULT_LOCALE

TEMPLATES_DIR = PROJECT_ROOT / "templates" / "emails"
PARTS = ("subject.txt", "body.txt", "body.html")
SUBJECT_MAX = 200
_WHITESPACE = re.compile(r"\s+")


@lru_cache(maxsize=16)
def template_names(override: Path | None = None, directory: Path = TEMPLATES_DIR) -> tuple[str, ...]:
    """The emails there are: each folder of `directory` or `override` whose three parts exist (a
    part may come from either; `_base` and `_macros` are files, not folders), sorted."""
    folders = {path.name for root in (directory, override) if root is not None
               for path in Path(root).iterdir() if path.is_dir()}
    return tuple(sorted(name for name in folders
                        if all(any(root is not None and (Path(root) / name / part).is_file()
                                   for root in (override, directory)) for part in PARTS)))


TEMPLATES = template_names()  # the built-in emails


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    text: str
    html: str


@lru_cache(maxsize=8)
def environment(directory: Path = TEMPLATES_DIR, override: Path | None = None) -> Environment:
    """The Jinja2 environment: autoescape for .html only, undefined variables are errors.

    `override` (EMAIL_TEMPLATES_DIR) is searched first, file by file."""
    loaders = [FileSystemLoader(str(override))] if override else []
    env = Environment(
        loader=ChoiceLoader([*loaders, FileSystemLoader(str(directory))]),
        autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False,
                                     default=False),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        # Templates are read once per process (a change to EMAIL_TEMPLATES_DIR takes a restart, as
        # the start-up check of the policy's templates does): no stat of every file on every render.
        auto_reload=False,
        extensions=["jinja2.ext.i18n"],
    )
    env.policies["ext.i18n.trimmed"] = True  # a message's line breaks and indents are not part of it
    # New-style gettext (the message is a format string, its variables passed by name), installed
    # as one function each: jinja2.ext wraps a gettext in a function that calls it back through
    # Context.call, and its `_` is an alias that looks `gettext` up and calls it through Context.call
    # once more, two extra layers on each of the ~75 messages of an email. The same text comes out.
    env.newstyle_gettext = True  # type: ignore[attr-defined]
    env.globals.update(gettext=_gettext, _=_gettext, ngettext=_ngettext)
    env.filters["one_line"] = one_line
    return env


def compile_all(templates_dir: Path | None = None) -> int:
    """Compile every template file now (the emails and the files they share); how many.

    Called as a worker process starts: its first email of each kind then pays no compile (about
    7 ms each, 0.3 s for all), and a file of EMAIL_TEMPLATES_DIR that does not compile stops
    start-up with its name and line, instead of failing every email that uses it."""
    env = environment(TEMPLATES_DIR, templates_dir)
    names = env.list_templates(filter_func=lambda name: name.endswith((".txt", ".html")))
    for name in names:
        try:
            env.get_template(name)
        except TemplateSyntaxError as exc:
            raise TemplateNotCompiled(f"{exc.filename or name}, line {exc.lineno}: {exc.message}") from exc
    return len(names)


class TemplateNotCompiled(ValueError):
    """An email template file that Jinja2 cannot compile (the message names the file and line)."""


@lru_cache(maxsize=64)
def translators(locale: str | None, escaped: bool) -> dict[str, Callable[..., str]]:
    """`gettext`, `_` and `ngettext` in one language, for one kind of part (`escaped`: HTML), put
    in each part's render context by `render` (they shadow the environment's globals below).

    Why not only the globals: those take the context (the locale is in it), and Jinja2 gives a
    function that takes the context, called in a block or loop with variables of its own, a
    derived copy of the whole context on every call (`Context.call` with `_block_vars`): 80
    copies for the 11 emails (issue 17: a render now takes 0.94 of the time, and a payment
    failure 0.945 of the Python calls). These know their language and part, so Jinja2 calls them
    as they are. The words are the same: the 240 email previews (every template, variant and
    language) render byte for byte alike."""
    catalogue = email_locale.translations(locale)

    def gettext(message: str, /, **variables: Any) -> str:
        return _put_in(escaped, catalogue.gettext(message), variables)

    def ngettext(singular: str, plural: str, n: int, /, **variables: Any) -> str:
        variables.setdefault("num", n)
        return _put_in(escaped, catalogue.ngettext(singular, plural, n), variables)

    return {"gettext": gettext, "_": gettext, "ngettext": ngettext}


@pass_context
def _gettext(context, message: str, /, **variables: Any) -> str:
    """The message in the catalogue of the email's `locale` (English when it has none), with its
    variables put in, escaped in HTML: what jinja2.ext's new-style gettext does, in one call.
    (A template rendered without `translators` in its context: `render` always puts them in.)"""
    return translators(context.get("locale"), bool(context.eval_ctx.autoescape))["gettext"](message, **variables)


@pass_context
def _ngettext(context, singular: str, plural: str, n: int, /, **variables: Any) -> str:
    return translators(context.get("locale"), bool(context.eval_ctx.autoescape))["ngettext"](
        singular, plural, n, **variables)


def _put_in(escaped: bool, message: str, variables: dict[str, Any]) -> str:
    """The translated message as a format string: escaped in HTML (its variables then are too).
    A message with no variable and no `%` is its own result: formatting it changes nothing (half
    of an email's messages, each a dozen calls of Markup's formatting saved)."""
    text = Markup(message) if escaped else message
    if not variables and "%" not in message:
        return text
    return text % variables


@lru_cache(maxsize=1)
def _inliner() -> css_inline.CSSInliner:
    return css_inline.CSSInliner(keep_style_tags=False, keep_at_rules=True,
                                 load_remote_stylesheets=False)


def one_line(value: Any) -> str:
    """Collapse CR, LF, tabs and runs of spaces into single spaces (for subjects and names)."""
    return _WHITESPACE.sub(" ", str(value if value is not None else "")).strip()


def render_subject(template: str, context: dict[str, Any], templates_dir: Path | None = None) -> str:
    subject = one_line(environment(TEMPLATES_DIR, templates_dir).get_template(f"{template}/subject.txt").render(context))
    if len(subject) > SUBJECT_MAX:
        subject = subject[: SUBJECT_MAX - 1].rstrip() + "…"
    return subject


def render(template: str, context: dict[str, Any], templates_dir: Path | None = None) -> RenderedEmail:
    """Render the subject (one line), the plain-text part and the HTML part (CSS inlined).

    templates_dir: EMAIL_TEMPLATES_DIR, whose files replace the built-in ones name by name."""
    if template not in template_names(templates_dir):
        raise ValueError(f"unknown email template {template!r}")
    env = environment(TEMPLATES_DIR, templates_dir)
    context = {"locale": DEFAULT_LOCALE, **context, "template": template}
    locale = context["locale"]
    context["html_lang"] = email_locale.HTML_LANG.get(locale, "en")
    context.update(translators(locale, escaped=False))  # the subject and the text part
    subject = render_subject(template, context, templates_dir)
    context["subject"] = subject
    text = env.get_template(f"{template}/body.txt").render(context)
    html_context = {**context, **translators(locale, escaped=True)}
    html = env.get_template(f"{template}/body.html").render(html_context)
    return RenderedEmail(subject=subject, text=_tidy_text(text), html=_inliner().inline(html))


def _tidy_text(text: str) -> str:
    """No trailing spaces, at most one blank line in a row, one final newline."""
    lines = [line.rstrip() for line in text.strip().splitlines()]
    tidy: list[str] = []
    for line in lines:
        if line == "" and tidy and tidy[-1] == "":
            continue
        tidy.append(line)
    return "\n".join(tidy) + "\n"
