"""IAM policy documents shared by the AWS components (plain JSON builders: no resources here)."""

from __future__ import annotations

import json

AWS_MANAGED = "arn:aws:iam::aws:policy"


def service_trust_policy(service: str, *, tag_session: bool = False) -> str:
    """A role trust policy letting one AWS service principal assume the role."""
    actions = ["sts:AssumeRole", "sts:TagSession"] if tag_session else ["sts:AssumeRole"]
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"Service": service}, "Action": actions}],
        }
    )
