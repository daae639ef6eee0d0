"""Errors raised at the public boundary."""


class C2TInputError(ValueError):
    """Bad input from the user: a file, column, gene or parameter that cannot be used.

    The message names the offending thing; the CLI prints it on one line and exits non-zero.
    """


class C2TConnectionError(C2TInputError, ConnectionError):
    """An OpenAI-compatible server could not be reached (after the client's own retries).

    Both a :class:`C2TInputError` (the CLI reports it on one line) and a builtin :class:`ConnectionError`.
    """


def call_openai(fn, *, base_url: str | None, max_retries: int, model: str | None = None):
    """Run one ``openai`` client call; turn an unreachable server or an unknown model into a one-line error.

    Parameters
    ----------
    fn
        A function of no arguments that makes the call.
    base_url, max_retries, model
        Named in the messages (``None`` ``base_url`` means OpenAI itself).

    Raises
    ------
    C2TConnectionError
        The server did not answer (connection refused, timeout).
    C2TInputError
        The server does not serve ``model`` (or the endpoint).
    """
    import openai

    where = base_url or "api.openai.com"
    try:
        return fn()
    except (openai.APIConnectionError, openai.APITimeoutError) as err:
        msg = f"could not reach the OpenAI-compatible server at {where} after {max_retries} retries: {err}"
        raise C2TConnectionError(msg) from None
    except openai.NotFoundError as err:
        what = f"the model {model!r}" if model else "this model or endpoint"
        msg = f"the server at {where} does not serve {what}: {err}"
        raise C2TInputError(msg) from None
