//! What `palisade events setup` prints for an AWS target: the EventBridge rule pattern
//! that selects the CloudTrail management events of the APIs that change what Palisade
//! manages, the SQS queue policy that lets only that rule send, the IAM permissions
//! Palisade's principal needs, and a CloudFormation template of the three. It creates
//! nothing: the platform team reviews and deploys it.

use palisade_providers::events::{EC2_APIS, LAMBDA_APIS};
use serde_json::{Value, json};

/// Where the rule and the queue go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setup {
    /// The target's account: its default event bus carries its CloudTrail events.
    pub account: String,
    /// The target's region (CloudTrail events reach the bus of the region they happen in).
    pub region: String,
    /// The queue's name.
    pub queue_name: String,
    /// The rule's name.
    pub rule_name: String,
}

impl Setup {
    /// The queue's ARN.
    pub fn queue_arn(&self) -> String {
        format!(
            "arn:aws:sqs:{}:{}:{}",
            self.region, self.account, self.queue_name
        )
    }

    /// The queue's URL (what `--aws-events-queue` takes).
    pub fn queue_url(&self) -> String {
        format!(
            "https://sqs.{}.amazonaws.com/{}/{}",
            self.region, self.account, self.queue_name
        )
    }

    /// The rule's ARN.
    pub fn rule_arn(&self) -> String {
        format!(
            "arn:aws:events:{}:{}:rule/{}",
            self.region, self.account, self.rule_name
        )
    }

    /// The EventBridge event pattern: successful calls of the EC2 APIs on groups, rules,
    /// tags and endpoints, and of the Lambda APIs by prefix (CloudTrail names them with
    /// a version suffix: `UpdateFunctionConfiguration20150331v2`).
    pub fn event_pattern(&self) -> Value {
        let mut names: Vec<Value> = EC2_APIS.iter().map(|n| json!(n)).collect();
        names.extend(LAMBDA_APIS.iter().map(|p| json!({ "prefix": p })));
        json!({
            "source": ["aws.ec2", "aws.lambda"],
            "detail-type": ["AWS API Call via CloudTrail"],
            "account": [self.account],
            "region": [self.region],
            "detail": {
                "eventSource": ["ec2.amazonaws.com", "lambda.amazonaws.com"],
                "eventName": names,
                "errorCode": [{ "exists": false }],
            },
        })
    }

    /// The queue policy: only this rule may send to the queue.
    pub fn queue_policy(&self) -> Value {
        send_policy(json!(self.queue_arn()), json!(self.rule_arn()))
    }

    /// What Palisade's principal needs: read and delete the queue's messages, and look
    /// up who made a drift the events did not name.
    pub fn iam_policy(&self) -> Value {
        json!({
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "ReadChangeEvents",
                    "Effect": "Allow",
                    "Action": ["sqs:ReceiveMessage", "sqs:DeleteMessage"],
                    "Resource": self.queue_arn(),
                },
                {
                    "Sid": "WhoChangedIt",
                    "Effect": "Allow",
                    "Action": "cloudtrail:LookupEvents",
                    "Resource": "*",
                },
            ],
        })
    }

    /// A CloudFormation template of the queue, the rule and the queue policy (deploy it
    /// in the target's account and region).
    pub fn cloudformation(&self) -> Value {
        json!({
            "AWSTemplateFormatVersion": "2010-09-09",
            "Description": "Palisade change events: CloudTrail management events of the APIs Palisade enforces, to an SQS queue it long-polls",
            "Resources": {
                "PalisadeEventsQueue": {
                    "Type": "AWS::SQS::Queue",
                    "Properties": {
                        "QueueName": self.queue_name,
                        // The queue's default; Palisade asks for its own on every
                        // receive (twice its reconcile timeout, plus its longest retry
                        // backoff and a minute: 26 minutes at the defaults).
                        "VisibilityTimeout": 1560,
                        "MessageRetentionPeriod": 86400,
                        "ReceiveMessageWaitTimeSeconds": 20,
                        "SqsManagedSseEnabled": true,
                    },
                },
                "PalisadeEventsRule": {
                    "Type": "AWS::Events::Rule",
                    "Properties": {
                        "Name": self.rule_name,
                        "Description": "Changes to security groups, VPC endpoints and Lambda placement, for Palisade",
                        "EventPattern": self.event_pattern(),
                        "State": "ENABLED",
                        "Targets": [{
                            "Id": "palisade",
                            "Arn": { "Fn::GetAtt": ["PalisadeEventsQueue", "Arn"] },
                        }],
                    },
                },
                "PalisadeEventsQueuePolicy": {
                    "Type": "AWS::SQS::QueuePolicy",
                    "Properties": {
                        "Queues": [{ "Ref": "PalisadeEventsQueue" }],
                        "PolicyDocument": send_policy(
                            json!({ "Fn::GetAtt": ["PalisadeEventsQueue", "Arn"] }),
                            json!({ "Fn::GetAtt": ["PalisadeEventsRule", "Arn"] }),
                        ),
                    },
                },
            },
            "Outputs": {
                "QueueUrl": {
                    "Description": "Give it to palisade run --aws-events-queue",
                    "Value": { "Ref": "PalisadeEventsQueue" },
                },
            },
        })
    }

    /// Everything, as one document (`--format json`).
    pub fn document(&self) -> Value {
        json!({
            "queueUrl": self.queue_url(),
            "queueArn": self.queue_arn(),
            "ruleArn": self.rule_arn(),
            "eventPattern": self.event_pattern(),
            "queuePolicy": self.queue_policy(),
            "iamPolicy": self.iam_policy(),
            "cloudFormation": self.cloudformation(),
        })
    }

    /// For people (`--format text`).
    pub fn text(&self) -> String {
        let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default();
        format!(
            "# Palisade change events for account {account}, region {region}\n\
             # Nothing was created. Deploy the CloudFormation template below (or the three\n\
             # parts by hand) in that account and region, give Palisade's principal the IAM\n\
             # permissions, and run it with:\n\
             #   palisade run … --aws-events-queue {url}\n\n\
             ## EventBridge rule {rule} (default event bus), event pattern\n{pattern}\n\n\
             ## SQS queue policy of {queue}\n{queue_policy}\n\n\
             ## IAM permissions for Palisade's principal\n{iam}\n\n\
             ## CloudFormation template\n{cfn}\n",
            account = self.account,
            region = self.region,
            url = self.queue_url(),
            rule = self.rule_name,
            queue = self.queue_name,
            pattern = pretty(&self.event_pattern()),
            queue_policy = pretty(&self.queue_policy()),
            iam = pretty(&self.iam_policy()),
            cfn = pretty(&self.cloudformation()),
        )
    }
}

/// A queue policy by which only EventBridge, for the rule `rule`, may send to `queue`
/// (ARNs, or CloudFormation references to them).
fn send_policy(queue: Value, rule: Value) -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "PalisadeChangeEvents",
            "Effect": "Allow",
            "Principal": { "Service": "events.amazonaws.com" },
            "Action": "sqs:SendMessage",
            "Resource": queue,
            "Condition": { "ArnEquals": { "aws:SourceArn": rule } },
        }],
    })
}

#[cfg(test)]
mod tests {
    use palisade_providers::events::{lambda_api, parse_cloudtrail};

    use super::*;

    fn setup() -> Setup {
        Setup {
            account: "123456789012".into(),
            region: "eu-west-1".into(),
            queue_name: "palisade-events".into(),
            rule_name: "palisade-prod-changes".into(),
        }
    }

    #[test]
    fn the_pattern_selects_exactly_what_the_reader_accepts() {
        let p = setup().event_pattern();
        let names = p["detail"]["eventName"].as_array().unwrap();
        for n in names {
            match (n.as_str(), n["prefix"].as_str()) {
                (Some(exact), _) => assert!(EC2_APIS.contains(&exact)),
                (None, Some(prefix)) => {
                    assert_eq!(lambda_api(&format!("{prefix}20150331v2")), Some(prefix))
                }
                _ => panic!("{n}"),
            }
        }
        assert_eq!(names.len(), EC2_APIS.len() + LAMBDA_APIS.len());
        assert_eq!(p["account"][0], "123456789012");
        // What the pattern lets through, the reader takes (a minimal matching event).
        let event = json!({
            "detail-type": "AWS API Call via CloudTrail", "account": "123456789012",
            "region": "eu-west-1", "source": "aws.ec2",
            "detail": {"eventSource": "ec2.amazonaws.com", "eventName": "ModifySecurityGroupRules",
                "requestParameters": {"ModifySecurityGroupRulesRequest": {"GroupId": "sg-0123456789abcdef0"}}}
        });
        let e = parse_cloudtrail(&event.to_string()).unwrap();
        assert_eq!(e.resources, vec!["sg-0123456789abcdef0"]);
    }

    #[test]
    fn only_the_rule_may_send_and_palisade_may_only_read() {
        let s = setup();
        let q = s.queue_policy();
        assert_eq!(
            q["Statement"][0]["Condition"]["ArnEquals"]["aws:SourceArn"],
            "arn:aws:events:eu-west-1:123456789012:rule/palisade-prod-changes"
        );
        let iam = s.iam_policy();
        assert_eq!(
            iam["Statement"][0]["Action"],
            json!(["sqs:ReceiveMessage", "sqs:DeleteMessage"])
        );
        assert_eq!(
            s.cloudformation()["Resources"]["PalisadeEventsRule"]["Properties"]["EventPattern"],
            s.event_pattern()
        );
        assert!(s.text().contains(
            "--aws-events-queue https://sqs.eu-west-1.amazonaws.com/123456789012/palisade-events"
        ));
    }
}
