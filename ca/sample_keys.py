"""Sample RSA subject keys for the profiles' template lints (:meth:`ca.issuance.
CertificateFactory.lint_template`): public keys only, as SubjectPublicKeyInfo (RFC 5280
§4.1.2.7, RFC 8017) in base64 DER.

A template's subject key is sample data, like its vetted names: only its public half goes
into the throwaway certificate pkilint reads, and nothing ever verifies a signature with
it. Generating an RSA key pair for it cost about 0.47 s of CPU (2048 and 3072 bits) in
every process that loads the policies, which is every ``eport serve`` start; curves and
Ed25519 are made in a millisecond and stay throwaway keys.

Made with ``openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:N | openssl pkey
-pubout -outform DER | base64``; the private halves were never written down.
"""

from __future__ import annotations

import base64
import functools

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ca.keys import KeyType

_SPKI: dict[KeyType, str] = {
    KeyType.RSA2048: (
        "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEApB9B8KymYSOOlse1dgak1prN8n24ejG//46L7yoY"
        "OcDuoxzy+Jvd1aNCvj29BImOJrPOcSDH7kPY95IH1I+g/f1zuYMsLuCl75HQbshywcnArz9kxgcIcUm95TVu"
        "v1wUnRo+ngST5RQWY1SBOPVZQHAz0s1yTIjwCcNSJVWtgtOyDopSnlxLZpwp8/vPQOCPyWTAns3c1pyYASCT"
        "7Wj6JGOgFRnFz+JIevGTlc/cjZkbFaCapf3jHoCRrGl9jS1Bv0Nl7PfI/ZyO7kenCn5K2h1TE52LmnaVUlxu"
        "KDwUFvgwfedI95kuZ9C4qVmSmSKChgjXLq9qMCw5+iVNM8k6BQIDAQAB"
    ),
    KeyType.RSA3072: (
        "MIIBojANBgkqhkiG9w0BAQEFAAOCAY8AMIIBigKCAYEA2od7cp5uQx9DaMaZfQJp3UzP+uXBavdfEDHjgQ/e"
        "DxCH6x83yx6icGKyBPIf5OqIQ9KtBwG2DIMuu1w5Lu4cplD/UwdAxA5Ob+KQnYEfevXXRYl31i+psxXcxKSA"
        "YYHU8D/UZ4kByU1aO44gRqplnF+tcEbBsOhPgzVHmQgeG7oa0a2rj3Hlww7KH+j6f+DONVECaOvwNTqH/GjK"
        "k74Eh+kvjeukQIj5inFzbda4EQdO1J7xVzhznR8jCw6OFwU9FHyXDcovEEYK3N5EZUx4ESjwpuA7E37JelRD"
        "ENFYW6w97s+e+YYA1r45PxW5wRirk3jghTU5tU/O4HhzxQIUanucAzwfXq1LOeYQFpicr1DFbOQ/ySCV36Eo"
        "Kj5Xnz4OVY0oG2CcXvb3Oi6HhdQ6KjS3RCQwyKrePyPSz69gc/53yu43GaKlH8foyTa4kJKR27WBFYxBUxxu"
        "xZco6IZ7y5Q++nOXSgbTS/9DMUz5nPKbuvj47bhR14pvuydmyrfPAgMBAAE="
    ),
    KeyType.RSA4096: (
        "MIICIjANBgkqhkiG9w0BAQEFAAOCAg8AMIICCgKCAgEA2c54+EHwjnmL0YoEvozb8X5Hg3ssk2Xcvyt+YtYA"
        "AX16e/8HjnP+mmtBrFqhz9QsQ6R9GoxVxIoPWbBOh2lym0uVDzX673mBy/JAfVpFcAkeG13UJP4JW1B/tdwh"
        "s/tnk3xD/g0AigMvJqURzQQ6mz2ddcdIEkYzggYj0QNxGivg2Wi9GI05gYLIjbZtUZqvrQqP+hMo1zWrVxax"
        "4T44ilzRK8f6SQss9UYHCcgFOIoBvAhUvIa4oI4mkOkuFEj7u0k1HN0iqWD3XDueMfpo7nwxRNOggkPTFCYD"
        "2Vfv1EfaIucUagEsxy0iKCc4nc0lZtOrXdMW0AZG4VjSxbOw7EP1bQrHlHEgR06apoPokCW0IaWtm23lAd16"
        "c+iLKjKp6LMz70zeaJiY2XSV21Y/i8tvyM5Qmf1BBaqJzgDCpIYHC/vaJx2IljoyUBNU51Fe9GB2su4+hopn"
        "xlQdr48kIQ1ttthbOlZLlDN9+G7VAc9YJQ0drRpLq6jOHzPeIwIIgf2bdmgROMnyuuHIIvcakCt89SMRosZT"
        "3q7Y6Zt4NSG7YOSn5C4FAsgyhic5/PwlQm/190a4j+WfNEVXMlKc04Nn7uYJh/cHySAPCssRsjsL7EZ+AXAe"
        "fT8V3p8EL0OJi4I8hRpWeszSGgCdiS4ggEfpPykNP1jnxxIlQwj0hRMCAwEAAQ=="
    ),
}


@functools.cache
def sample_rsa_key(kt: KeyType) -> rsa.RSAPublicKey:
    """The sample public key of RSA key type ``kt`` (KeyError for another type)."""
    key = serialization.load_der_public_key(base64.b64decode(_SPKI[kt]))
    assert isinstance(key, rsa.RSAPublicKey) and key.key_size == int(kt.value[3:])
    assert key.public_numbers().e == 65537
    return key
