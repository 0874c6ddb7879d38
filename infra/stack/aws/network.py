"""The VPC: public and private subnets in every zone, an internet gateway, NAT (one or one per zone), routes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws


@dataclass(frozen=True)
class ZoneSubnets:
    zone: str
    public_cidr: str
    private_cidr: str


@dataclass(frozen=True)
class NetworkArgs:
    cidr_block: str
    zones: Sequence[ZoneSubnets]
    # True: a NAT gateway in every zone (a zone outage keeps the others' egress). False: one, in the first zone.
    nat_gateway_per_zone: bool
    # Subnets are tagged for this cluster so its load balancers find them.
    cluster_name: str
    tags: Mapping[str, str]


class Network(pulumi.ComponentResource):
    vpc_id: pulumi.Output[str]
    public_subnet_ids: pulumi.Output[list[str]]
    private_subnet_ids: pulumi.Output[list[str]]

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("deepseek:aws:Network", name, None, opts)
        if len(args.zones) < 2:
            raise ValueError("Network needs at least two zones")
        child = pulumi.ResourceOptions(parent=self)
        self._tags = dict(args.tags)

        vpc = aws.ec2.Vpc(
            f"{name}-vpc",
            cidr_block=args.cidr_block,
            enable_dns_hostnames=True,
            enable_dns_support=True,
            tags=self._named(f"{name}-vpc"),
            opts=child,
        )
        gateway = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=vpc.id, tags=self._named(f"{name}-igw"), opts=child)
        public_routes = aws.ec2.RouteTable(
            f"{name}-public", vpc_id=vpc.id, tags=self._named(f"{name}-public"), opts=child
        )
        self._default_route(f"{name}-public-default", public_routes, gateway_id=gateway.id)

        cluster_tag = {f"kubernetes.io/cluster/{args.cluster_name}": "shared"}
        public_subnets: list[aws.ec2.Subnet] = []
        private_subnets: list[aws.ec2.Subnet] = []
        nat_gateways: list[aws.ec2.NatGateway] = []
        for zone in args.zones:
            public = aws.ec2.Subnet(
                f"{name}-public-{zone.zone}",
                vpc_id=vpc.id,
                availability_zone=zone.zone,
                cidr_block=zone.public_cidr,
                map_public_ip_on_launch=False,
                tags={**self._named(f"{name}-public-{zone.zone}"), **cluster_tag, "kubernetes.io/role/elb": "1"},
                opts=child,
            )
            aws.ec2.RouteTableAssociation(
                f"{name}-public-{zone.zone}", subnet_id=public.id, route_table_id=public_routes.id, opts=child
            )
            public_subnets.append(public)
            if args.nat_gateway_per_zone or not nat_gateways:
                nat_gateways.append(self._nat_gateway(name, zone.zone, public, gateway))

        for zone, nat in zip(args.zones, self._nat_per_zone(nat_gateways, len(args.zones)), strict=True):
            private = aws.ec2.Subnet(
                f"{name}-private-{zone.zone}",
                vpc_id=vpc.id,
                availability_zone=zone.zone,
                cidr_block=zone.private_cidr,
                tags={
                    **self._named(f"{name}-private-{zone.zone}"),
                    **cluster_tag,
                    "kubernetes.io/role/internal-elb": "1",
                },
                opts=child,
            )
            routes = aws.ec2.RouteTable(
                f"{name}-private-{zone.zone}",
                vpc_id=vpc.id,
                tags=self._named(f"{name}-private-{zone.zone}"),
                opts=child,
            )
            self._default_route(f"{name}-private-{zone.zone}-default", routes, nat_gateway_id=nat.id)
            aws.ec2.RouteTableAssociation(
                f"{name}-private-{zone.zone}", subnet_id=private.id, route_table_id=routes.id, opts=child
            )
            private_subnets.append(private)

        self.vpc_id = vpc.id
        self.public_subnet_ids = pulumi.Output.all(*[subnet.id for subnet in public_subnets])
        self.private_subnet_ids = pulumi.Output.all(*[subnet.id for subnet in private_subnets])
        self.register_outputs(
            {
                "vpcId": self.vpc_id,
                "publicSubnetIds": self.public_subnet_ids,
                "privateSubnetIds": self.private_subnet_ids,
            }
        )

    def _default_route(self, name: str, table: aws.ec2.RouteTable, **target: pulumi.Input[str]) -> None:
        """0.0.0.0/0 through `target`: the internet gateway (public) or a zone's NAT gateway (private)."""
        aws.ec2.Route(
            name,
            route_table_id=table.id,
            destination_cidr_block="0.0.0.0/0",
            opts=pulumi.ResourceOptions(parent=self),
            **target,
        )

    def _named(self, name: str) -> dict[str, str]:
        return {**self._tags, "Name": name}

    def _nat_gateway(
        self, name: str, zone: str, subnet: aws.ec2.Subnet, gateway: aws.ec2.InternetGateway
    ) -> aws.ec2.NatGateway:
        child = pulumi.ResourceOptions(parent=self)
        address = aws.ec2.Eip(f"{name}-nat-{zone}", domain="vpc", tags=self._named(f"{name}-nat-{zone}"), opts=child)
        return aws.ec2.NatGateway(
            f"{name}-nat-{zone}",
            allocation_id=address.id,
            subnet_id=subnet.id,
            connectivity_type="public",
            tags=self._named(f"{name}-nat-{zone}"),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[gateway]),
        )

    @staticmethod
    def _nat_per_zone(nat_gateways: list[aws.ec2.NatGateway], zones: int) -> list[aws.ec2.NatGateway]:
        """The NAT gateway each zone's private subnet routes through: its own, or the single shared one."""
        return nat_gateways if len(nat_gateways) == zones else [nat_gateways[0]] * zones
