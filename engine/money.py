"""Currencies and amounts, as the rest of the engine sees them.

An amount is always a whole number of the currency's minor unit (cents for
usd, yen for jpy, fils for kwd). How many minor units make one major unit is
the currency's exponent, and it comes from the ISO 4217 table of active codes
("minor unit" column). Codes that have no minor unit in that table (precious
metals such as XAU, drawing rights XDR, the testing and "no currency" codes
XTS and XXX, the unit of account XUA, the Sucre XSU) are left out, because an
amount in them cannot be written in minor units at all. Fund codes that do
have an exponent (clf, uyw, mxv, ...) are kept.

Snapshot of the ISO list as of 2025. Two replaced currencies are kept next to
their successors because balances in them still exist while the change-over
runs: ang beside xcg (Curacao and Sint Maarten) and bgn (Bulgaria, now on
the euro). Withdrawn codes such as hrk, sll, zwl and cuc are not accepted.

Keys are lowercase because that is how Stripe's API spells a currency, and
the gateway hands us the string the client sent; matching is exact, so "USD"
is rejected the same way Stripe rejects it.
"""

# Grouped by exponent so that the unusual ones are easy to spot and review;
# every code not listed in the three small groups has two decimals.
_EXPONENT_0 = (
    "bif clp djf gnf isk jpy kmf krw pyg rwf ugx uyi vnd vuv xaf xof xpf"
)
_EXPONENT_3 = "bhd iqd jod kwd lyd omr tnd"
_EXPONENT_4 = "clf uyw"
_EXPONENT_2 = (
    "aed afn all amd ang aoa ars aud awg azn "
    "bam bbd bdt bgn bmd bnd bob bov brl bsd btn bwp byn bzd "
    "cad cdf che chf chw cny cop cou crc cup cve czk "
    "dkk dop dzd "
    "egp ern etb eur "
    "fjd fkp "
    "gbp gel ghs gip gmd gtq gyd "
    "hkd hnl htg huf "
    "idr ils inr irr "
    "jmd "
    "kes kgs khr kpw kyd kzt "
    "lak lbp lkr lrd lsl "
    "mad mdl mga mkd mmk mnt mop mru mur mvr mwk mxn mxv myr mzn "
    "nad ngn nio nok npr nzd "
    "pab pen pgk php pkr pln "
    "qar "
    "ron rsd rub "
    "sar sbd scr sdg sek sgd shp sle sos srd ssp stn svc syp szl "
    "thb tjs tmt top try ttd twd tzs "
    "uah usd usn uyu uzs "
    "ved ves "
    "wst "
    "xcd xcg "
    "yer "
    "zar zmw zwg"
)

CURRENCY_EXPONENTS: dict[str, int] = {
    code: exponent_value
    for codes, exponent_value in (
        (_EXPONENT_0, 0),
        (_EXPONENT_2, 2),
        (_EXPONENT_3, 3),
        (_EXPONENT_4, 4),
    )
    for code in codes.split()
}

# A code listed in two groups would silently take the later exponent.
assert len(CURRENCY_EXPONENTS) == sum(
    len(codes.split()) for codes in (_EXPONENT_0, _EXPONENT_2, _EXPONENT_3, _EXPONENT_4)
)

# The same bounds Stripe applies to a card amount: at least one minor unit,
# at most eight digits.
AMOUNT_MIN_MINOR = 1
AMOUNT_MAX_MINOR = 99_999_999


def is_currency(code: str) -> bool:
    """True iff `code` is an active ISO 4217 code spelled in lowercase."""
    return code in CURRENCY_EXPONENTS


def exponent(currency: str) -> int:
    """Number of decimal places of the minor unit; KeyError if unknown."""
    return CURRENCY_EXPONENTS[currency]


def amount_in_range(amount_minor: int) -> bool:
    """True iff `amount_minor` is an int within the accepted bounds.

    bool is a subclass of int, so True would otherwise pass as one minor
    unit; floats are refused outright rather than rounded.
    """
    if type(amount_minor) is not int:
        return False
    return AMOUNT_MIN_MINOR <= amount_minor <= AMOUNT_MAX_MINOR


# Stripe's published minimum charge amounts, in minor units, for the
# currencies it lists (roughly 0.50 USD each). Other currencies have no
# published figure here and accept any amount from one minor unit up.
MINIMUM_CHARGE_MINOR = {
    "usd": 50, "aed": 200, "aud": 50, "bgn": 100, "brl": 50, "cad": 50, "chf": 50,
    "czk": 1500, "dkk": 250, "eur": 50, "gbp": 30, "hkd": 400, "huf": 17500,
    "inr": 50, "jpy": 50, "mxn": 1000, "myr": 200, "nok": 300, "nzd": 50,
    "pln": 200, "ron": 200, "sek": 300, "sgd": 50, "thb": 1000,
}


def minimum_charge_minor(currency: str) -> int:
    """The smallest amount that may be charged in `currency`."""
    return MINIMUM_CHARGE_MINOR.get(currency, AMOUNT_MIN_MINOR)
