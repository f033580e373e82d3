//! The rest of an instance as DescribeInstances answers it: what EC2 says of an EKS worker besides
//! its ID, state, type, launch time, tags and metadata options — placement, security groups,
//! block devices, network interfaces with the addresses the VPC CNI assigned them, CPU options
//! and the newer option blocks — laid out one element per line, indented, as EC2's answers are.
//! The operator reads none of it; an answer with it is ~9× the bytes of one without, which is
//! what reading a real fleet costs (see `docs/ec2-semantics.md`, "What an instance's answer
//! holds"). Off by default ([`super::Ec2Double::detailed_answers`]).
//!
//! The fields and their order follow the EC2 API reference's `Instance`, `InstanceNetworkInterface`
//! and `InstanceBlockDeviceMapping` types and its DescribeInstances example; the values are
//! made up but shaped like real ones (IDs, addresses, ARNs).

use std::fmt::Write as _;

/// Network interfaces of an EKS worker with the VPC CNI's default warm pool (the primary one and
/// one warm ENI).
const INTERFACES: u64 = 2;
/// Private IPv4 addresses per interface (an m5.large takes 10).
const ADDRESSES: u64 = 10;

/// The subnet, VPC and security group of every instance and interface.
const SUBNET_ID: &str = "subnet-0a1b2c3d4e5f60718";
const VPC_ID: &str = "vpc-0123456789abcdef0";
const SECURITY_GROUP: (&str, &str) = ("sg-0fedcba9876543210", "eks-cluster-sg-demo-1234567890");

/// A `groupSet` of the security group, its first line indented by `indent` spaces (after the
/// line break before it).
fn group_set(indent: usize) -> String {
    let pad = " ".repeat(indent);
    let (id, name) = SECURITY_GROUP;
    format!(
        "{pad}<groupSet>\n{pad}    <item>\n{pad}        <groupId>{id}</groupId>\n{pad}        <groupName>{name}</groupName>\n{pad}    </item>\n{pad}</groupSet>"
    )
}

/// Writes the detail of instance number `n` (its reservation's number) into `xml`.
pub(super) fn write_detail(xml: &mut String, n: u64) {
    let ip = |eni: u64, k: u64| format!("10.{}.{}.{}", (n >> 8) & 0xff, n & 0xff, 1 + eni * ADDRESSES + k);
    let primary = ip(0, 0);
    let dns = format!("ip-{}.eu-west-1.compute.internal", primary.replace('.', "-"));
    let _ = write!(
        xml,
        "
            <privateDnsName>{dns}</privateDnsName>
            <dnsName/>
            <reason/>
            <amiLaunchIndex>0</amiLaunchIndex>
            <productCodes/>
            <placement>
                <availabilityZone>eu-west-1a</availabilityZone>
                <groupName/>
                <tenancy>default</tenancy>
            </placement>
            <kernelId/>
            <monitoring>
                <state>disabled</state>
            </monitoring>
            <subnetId>{SUBNET_ID}</subnetId>
            <vpcId>{VPC_ID}</vpcId>
            <privateIpAddress>{primary}</privateIpAddress>
            <sourceDestCheck>true</sourceDestCheck>
{groups}
            <architecture>x86_64</architecture>
            <rootDeviceType>ebs</rootDeviceType>
            <rootDeviceName>/dev/xvda</rootDeviceName>
            <blockDeviceMapping>
                <item>
                    <deviceName>/dev/xvda</deviceName>
                    <ebs>
                        <volumeId>vol-{n:017x}</volumeId>
                        <status>attached</status>
                        <attachTime>2026-11-30T08:15:01.000Z</attachTime>
                        <deleteOnTermination>true</deleteOnTermination>
                    </ebs>
                </item>
            </blockDeviceMapping>
            <virtualizationType>hvm</virtualizationType>
            <clientToken>fleet-{n:08x}-1a2b-3c4d-5e6f-7a8b9c0d1e2f</clientToken>
            <hypervisor>xen</hypervisor>
            <networkInterfaceSet>",
        groups = group_set(12),
    );
    for eni in 0..INTERFACES {
        write_interface(xml, n, eni, &ip);
    }
    xml.push_str(
        "
            </networkInterfaceSet>",
    );
    write_option_blocks(xml, n);
}

/// The instance profile, CPU options and the newer option blocks.
fn write_option_blocks(xml: &mut String, n: u64) {
    let _ = write!(
        xml,
        "
            <iamInstanceProfile>
                <arn>arn:aws:iam::123456789012:instance-profile/eks-demo-workers</arn>
                <id>AIPAEXAMPLE{n:010}</id>
            </iamInstanceProfile>
            <ebsOptimized>true</ebsOptimized>
            <enaSupport>true</enaSupport>
            <cpuOptions>
                <coreCount>1</coreCount>
                <threadsPerCore>2</threadsPerCore>
            </cpuOptions>
            <capacityReservationSpecification>
                <capacityReservationPreference>open</capacityReservationPreference>
            </capacityReservationSpecification>
            <hibernationOptions>
                <configured>false</configured>
            </hibernationOptions>
            <enclaveOptions>
                <enabled>false</enabled>
            </enclaveOptions>
            <bootMode>uefi-preferred</bootMode>
            <platformDetails>Linux/UNIX</platformDetails>
            <usageOperation>RunInstances</usageOperation>
            <usageOperationUpdateTime>2026-11-30T08:15:00.000Z</usageOperationUpdateTime>
            <privateDnsNameOptions>
                <hostnameType>ip-name</hostnameType>
                <enableResourceNameDnsARecord>false</enableResourceNameDnsARecord>
                <enableResourceNameDnsAAAARecord>false</enableResourceNameDnsAAAARecord>
            </privateDnsNameOptions>
            <maintenanceOptions>
                <autoRecovery>default</autoRecovery>
            </maintenanceOptions>
            <currentInstanceBootMode>legacy-bios</currentInstanceBootMode>
            <networkPerformanceOptions>
                <bandwidthWeighting>default</bandwidthWeighting>
            </networkPerformanceOptions>
            <operator>
                <managed>false</managed>
            </operator>"
    );
}

/// One attached network interface with its private addresses.
fn write_interface(xml: &mut String, n: u64, eni: u64, ip: &dyn Fn(u64, u64) -> String) {
    let primary = ip(eni, 0);
    let _ = write!(
        xml,
        "
                <item>
                    <networkInterfaceId>eni-{n:015x}{eni:02x}</networkInterfaceId>
                    <subnetId>{SUBNET_ID}</subnetId>
                    <vpcId>{VPC_ID}</vpcId>
                    <description>{description}</description>
                    <ownerId>123456789012</ownerId>
                    <status>in-use</status>
                    <macAddress>02:{a:02x}:{b:02x}:{eni:02x}:5e:01</macAddress>
                    <privateIpAddress>{primary}</privateIpAddress>
                    <sourceDestCheck>true</sourceDestCheck>
{groups}
                    <attachment>
                        <attachmentId>eni-attach-{n:015x}{eni:02x}</attachmentId>
                        <deviceIndex>{eni}</deviceIndex>
                        <status>attached</status>
                        <attachTime>2026-11-30T08:15:00.000Z</attachTime>
                        <deleteOnTermination>true</deleteOnTermination>
                        <networkCardIndex>0</networkCardIndex>
                    </attachment>
                    <privateIpAddressesSet>",
        description = if eni == 0 { "" } else { "aws-K8S-i-node" },
        groups = group_set(20),
        a = (n >> 8) & 0xff,
        b = n & 0xff,
    );
    for k in 0..ADDRESSES {
        let address = ip(eni, k);
        let _ = write!(
            xml,
            "
                        <item>
                            <privateIpAddress>{address}</privateIpAddress>
                            <privateDnsName>ip-{dashed}.eu-west-1.compute.internal</privateDnsName>
                            <primary>{primary}</primary>
                        </item>",
            dashed = address.replace('.', "-"),
            primary = k == 0,
        );
    }
    xml.push_str(
        "
                    </privateIpAddressesSet>
                    <ipv6AddressesSet/>
                    <interfaceType>interface</interfaceType>
                </item>",
    );
}
